"""Atari DTs as model folders (atari/export_atari.py, pretrained_atari.py): a folder's model plays
exactly the run's games (the same actions, step for step), evaluate_atari.py takes the folder,
and bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ATARI_DIR = Path(__file__).resolve().parents[1] / "atari"
sys.path.insert(0, str(ATARI_DIR))

from cli import assert_one_line_error, run_main, script_env  # noqa: E402
from decision_transformer.models.pretrained import PretrainedError, from_pretrained  # noqa: E402

TINY = [
    "--num_buffers", "1", "--trajectories_per_buffer", "1", "--num_steps", "300",
    "--context_length", "4", "--batch_size", "4", "--n_layer", "1", "--n_head", "2",
    "--embed_dim", "32", "--num_workers", "0", "--device", "cpu",
]  # fmt: skip


def run_script(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = script_env()
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ATARI_DIR, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("atari")
    replay = root / "replay"
    proc = run_script("create_dataset.py", "--collect", "--game", "Breakout", "--out", replay,
                      "--steps_per_buffer", "1200", "--buffers", "1", "--seed", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = {}
    for backbone in ("gpt", "qwen3"):
        out[backbone] = root / backbone
        proc = run_script(
            "run_dt_atari.py", *TINY, "--backbone", backbone, "--data_dir_prefix", replay,
            "--epochs", "1", "--steps_per_epoch", "3", "--eval_episodes", "4", "--eval_envs", "2",
            "--eval_max_steps", "150", "--out_dir", out[backbone],
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
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
