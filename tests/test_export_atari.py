"""Atari DTs as model folders (atari/export_atari.py, pretrained_atari.py): a folder's model plays
exactly the run's games (the same actions, step for step), evaluate_atari.py takes the folder,
and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from atari_cli import TINY, run_script
from cli import assert_one_line_error, run_main
from decision_transformer.models.pretrained import PretrainedError, from_pretrained


@pytest.fixture(scope="module")
def runs(atari_replay, tmp_path_factory) -> dict[str, Path]:
    """A tiny run per backbone; the GPT one exports itself at the end (the default), the Qwen3
    one with --export false does not."""
    root = tmp_path_factory.mktemp("atari")
    out = {}
    for backbone, export in (("gpt", "true"), ("qwen3", "false")):
        out[backbone] = root / backbone
        proc = run_script(
            "run_dt_atari.py", *TINY, "--backbone", backbone, "--data_dir_prefix", atari_replay,
            "--epochs", "1", "--steps_per_epoch", "3", "--eval_episodes", "4", "--eval_envs", "2",
            "--eval_max_steps", "150", "--out_dir", out[backbone], "--export", export,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "warning" not in proc.stderr, proc.stderr
    return out


def played(model, cfg) -> tuple[list[float], list]:
    from run_dt_atari import evaluate_model

    trace: list = []
    res = evaluate_model(model, cfg, torch.device("cpu"), trace=trace)
    return res["returns"], sorted(trace)


@pytest.mark.parametrize("backbone", ["gpt", "qwen3"])
def test_an_exported_atari_dt_plays_the_runs_games_exactly(runs, tmp_path, backbone):
    import export_atari
    from decision_transformer.run.checkpoint import load_checkpoint
    from pretrained_atari import eval_config, from_pretrained_atari
    from run_dt_atari import build_model

    out = tmp_path / "model"
    proc = run_main(export_atari.main, runs[backbone], "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    folder = json.loads((out / "config.json").read_text())
    last = json.loads((runs[backbone] / "metrics.jsonl").read_text().splitlines()[-1])
    assert folder["evaluation"]["returns"] == last["eval/returns"]
    assert folder["model"]["backbone"] == backbone
    # The run's model, as evaluate_atari.py builds it from checkpoint.pt, and the folder's: the
    # same actions at every step of every episode.
    state = load_checkpoint(runs[backbone] / "checkpoint.pt")
    cfg = dict(state["config"])
    w = state["model"]
    run_model = build_model(cfg, w["head.weight"].shape[0], w["global_pos_emb"].shape[1] - 1)
    run_model.load_state_dict(w)
    loaded = from_pretrained_atari(out)
    ecfg = eval_config(loaded.pretrained_config, None, None, None, None, None)
    assert {k: ecfg[k] for k in ("seed", "eval_target", "eval_max_steps", "eval_episodes")} == {
        k: cfg[k] for k in ("seed", "eval_target", "eval_max_steps", "eval_episodes")
    }
    ours, theirs = played(loaded, ecfg), played(run_model, cfg)
    assert ours == theirs and len(ours[1]) > 4
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: pytorch\n") and "evaluate_atari.py" in card
    # Nothing of this machine's folders travels; the stack the run trained on does.
    for local in (runs[backbone].parent, tmp_path):
        assert str(local) not in (out / "config.json").read_text() + card, local
    recorded = json.loads((runs[backbone] / "config.json").read_text())["versions"]
    assert folder["provenance"]["versions"] == {"recorded_by": "run", **recorded}
    assert f"torch {recorded['torch']}" in card.split("Trained on:")[1]


def test_evaluate_atari_takes_a_folder_and_leaves_it(runs, tmp_path):
    out = tmp_path / "model"
    assert run_script("export_atari.py", runs["gpt"], "--out", out, "--eval_episodes", "2"
                      ).returncode == 0  # fmt: skip
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    gif, report = tmp_path / "ep.gif", tmp_path / "eval.json"
    proc = run_script("evaluate_atari.py", "--checkpoint", out, "--json", report, "--video", gif)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(report.read_text())
    assert res["returns"] == json.loads((out / "config.json").read_text())["evaluation"]["returns"]
    assert gif.stat().st_size > 0 and res["video"]["frames"] > 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_atari_bad_input_is_one_line(runs, tmp_path):
    import export_atari
    from pretrained_atari import from_pretrained_atari

    out = tmp_path / "model"
    assert run_main(export_atari.main, runs["gpt"], "--out", out, "--eval_episodes", "0"
                    ).returncode == 0  # fmt: skip
    with pytest.raises(PretrainedError, match="holds an Atari DT"):
        from_pretrained(out)
    gym_like = tmp_path / "gym_like"
    gym_like.mkdir()
    cfg = json.loads((out / "config.json").read_text())
    (gym_like / "config.json").write_text(json.dumps({**cfg, "architecture": "gpt2_dt"}))
    with pytest.raises(PretrainedError, match="not an Atari DT"):
        from_pretrained_atari(gym_like)
    wider = tmp_path / "wider"
    wider.mkdir()
    (wider / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    cfg["model"]["n_embd"] = 64
    (wider / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedError, match="do not fit the model"):
        from_pretrained_atari(wider)
    assert_one_line_error(run_main(export_atari.main, runs["gpt"], "--out", out),
                          "already exists and is not an empty folder")  # fmt: skip
    assert_one_line_error(run_main(export_atari.main, tmp_path / "none", "--out", tmp_path / "x"),
                          "no run folder at")  # fmt: skip
    proc = run_script("evaluate_atari.py", "--checkpoint", wider)
    assert_one_line_error(proc, "do not fit the model")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("| model |")]


def test_training_ends_with_a_model_folder_of_its_own_evaluation(runs, tmp_path):
    """run_dt_atari.py writes {out_dir}/model at the end, as the gym half does; its card holds
    the run's last evaluation, which evaluate_atari.py and --evaluate_only reproduce from the
    folder; --export false writes none."""
    model = runs["gpt"] / "model"
    assert sorted(files_of(model)) == ["README.md", "config.json", "model.safetensors"]
    assert not (runs["qwen3"] / "model").exists()
    ev = json.loads((model / "config.json").read_text())["evaluation"]
    last = json.loads((runs["gpt"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert ev["returns"] == last["eval/returns"] and ev["lengths"] == last["eval/lengths"]
    assert "measured by the run, after epoch 1" in (model / "README.md").read_text()
    before = files_of(model)
    report = tmp_path / "eval.json"
    proc = run_script("evaluate_atari.py", "--checkpoint", model, "--json", report)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(report.read_text())["returns"] == ev["returns"]
    only = run_script("run_dt_atari.py", "--evaluate_only", "--out_dir", model, "--device", "cpu")
    assert only.returncode == 0, only.stderr[-2000:]
    assert table_rows(only.stdout) == table_rows(proc.stdout) and table_rows(proc.stdout)
    assert files_of(model) == before


def test_resuming_a_finished_run_exports_it_again_in_place(runs, atari_replay):
    """--resume of a finished run trains nothing and writes its model folder anew over the
    earlier one (the same weights: the same bytes), leaving no temporary behind."""
    run = runs["gpt"]
    before = files_of(run / "model")
    proc = run_script(
        "run_dt_atari.py", *TINY, "--backbone", "gpt", "--data_dir_prefix", atari_replay,
        "--epochs", "1", "--steps_per_epoch", "3", "--eval_episodes", "4", "--eval_envs", "2",
        "--eval_max_steps", "150", "--out_dir", run, "--resume",
    )  # fmt: skip
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr[-2000:]
    assert f"model folder: {run / 'model'}" in proc.stdout
    assert files_of(run / "model") == before
    assert not [p for p in run.iterdir() if p.name.startswith(".model")]


def test_plot_atari_refuses_a_model_folder_in_one_line(runs):
    """A model folder holds one evaluation, not curves: plot_atari.py says so and names the
    run folder that has them."""
    proc = run_script("plot_atari.py", runs["gpt"] / "model", "--table")
    assert_one_line_error(proc, "is a model folder: it holds one measured evaluation")
    assert str(runs["gpt"]) in proc.stderr


def test_push_to_hub_uploads_an_atari_folder(runs, tmp_path, monkeypatch):
    """push_to_hub.py (gym/) takes an Atari model folder too: its three files go to the repo
    (HfApi's two calls recorded, tests/hub_fakes.py); a newer format is refused in one line."""
    from decision_transformer.run import hub
    from hub_fakes import record_hub_calls

    folder = runs["gpt"] / "model"
    before = files_of(folder)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_atari")
    rec = record_hub_calls(monkeypatch)
    proc = run_main(hub.main, folder, "someone/breakout-dt")
    assert proc.returncode == 0, proc.stderr
    kwargs, sent = rec.sent()
    assert sent == ["README.md", "config.json", "model.safetensors"]
    assert kwargs["repo_id"] == "someone/breakout-dt"
    assert kwargs["commit_message"] == "Upload atari_dt for Breakout"
    assert files_of(folder) == before
    newer = tmp_path / "newer"
    newer.mkdir()
    for name, data in before.items():
        (newer / name).write_bytes(data)
    cfg = json.loads(before["config.json"])
    cfg["format_version"] += 1
    (newer / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_main(hub.main, newer, "someone/breakout-dt"), "newer than this code")


def test_evaluate_atari_takes_a_cached_repo_id_offline(runs, tmp_path):
    """evaluate_atari.py --checkpoint OWNER/NAME with no network: the repo id resolves through
    huggingface_hub's cache (tests/hub_fakes.py lays it out) and plays the folder's evaluation,
    its video included."""
    from hub_fakes import hub_cache

    folder = runs["gpt"] / "model"
    cache = tmp_path / "hub"
    hub_cache(cache, "someone/breakout-dt", folder)
    report, gif = tmp_path / "eval.json", tmp_path / "ep.gif"
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = run_script("evaluate_atari.py", "--checkpoint", "someone/breakout-dt", "--json", report,
                      "--video", gif, env=offline)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(report.read_text())
    card = json.loads((folder / "config.json").read_text())["evaluation"]
    assert res["returns"] == card["returns"]
    assert res["video"]["frames"] == res["lengths"][0] + 1 and gif.stat().st_size > 0
    proc = run_script("evaluate_atari.py", "--checkpoint", "someone/not-cached", env=offline)
    assert_one_line_error(proc, "cannot fetch someone/not-cached from the Hugging Face Hub")
