"""A multi-game Atari model as a model folder (run_dt_atari.py --games, export_atari.py,
pretrained_atari.py): the run writes it at the end, every game's acting info in config.json; the
folder plays every game as the run's checkpoint does (the same actions, step for step, the same
seeds); evaluate_atari.py plays a folder's games (all, or --game one), through a Hub id too; bad
folders and games are one line. On collected replays of Breakout and Qbert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from atari_cli import TINY, run_script
from cli import assert_one_line_error, run_main
from decision_transformer.errors import UserError

GAMES = ["Breakout", "Qbert"]


@pytest.fixture(scope="module")
def run(atari_two_games, tmp_path_factory) -> Path:
    """A tiny two-game run that exports itself at the end (the default)."""
    out = tmp_path_factory.mktemp("atari_multi") / "run"
    proc = run_script(
        "run_dt_atari.py", *TINY, "--games", *GAMES, "--data_dir_prefix", atari_two_games,
        "--epochs", "1", "--steps_per_epoch", "3", "--eval_episodes", "2", "--eval_envs", "2",
        "--eval_max_steps", "150", "--out_dir", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in proc.stderr, proc.stderr
    assert f"model folder: {out / 'model'}" in proc.stdout
    return out


def last_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def copy_folder(src: Path, dst: Path, edit=None) -> Path:
    """A copy of a model folder, its config.json changed by ``edit(cfg)``."""
    shutil.copytree(src, dst)
    if edit is not None:
        cfg = json.loads((dst / "config.json").read_text())
        edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_a_multigame_run_ends_with_a_folder_that_plays_as_its_checkpoint(run):
    """{out_dir}/model holds every game's acting info (the run's action sets, targets, return
    scales), its card the run's own last evaluation per game; loaded, it takes the checkpoint's
    action at every step of every episode of every game."""
    from decision_transformer.run.checkpoint import load_checkpoint
    from multigame import evaluate_games
    from pretrained_atari import eval_config, from_pretrained_atari
    from run_dt_atari import build_model

    folder = run / "model"
    assert sorted(files_of(folder)) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    run_cfg = json.loads((run / "config.json").read_text())
    specs = run_cfg["game_specs"]
    assert cfg["acting"]["games"] == [
        {"game": g, "action_set": specs[g]["action_set"], "target_return": specs[g]["target"],
         "rtg_scale": specs[g]["rtg_scale"]}
        for g in GAMES
    ]  # fmt: skip
    assert specs["Breakout"]["action_set"] != specs["Qbert"]["action_set"]
    assert specs["Breakout"]["rtg_scale"] != specs["Qbert"]["rtg_scale"]
    a = cfg["acting"]
    assert (a["max_steps"], a["dtype"], a["conditioned"]) == (150, "fp32", True)
    assert "game" not in a and "preprocessing" in a and cfg["model"]["n_actions"] == 18
    ev, row = cfg["evaluation"], last_eval(run)
    for g in GAMES:
        assert ev["games"][g]["returns"] == row[f"eval/{g}/returns"]
        assert ev["games"][g]["lengths"] == row[f"eval/{g}/lengths"]
    assert ev["mean_human_normalized"] == row["eval/mean_human_normalized"]
    card = (folder / "README.md").read_text()
    needles = ["| Breakout | 0 1 3 4 |", "| Breakout | 90 | 2 |", "| Qbert | 14000 | 2 |",
               "**mean over 2 games**", "measured by the run, after epoch 1",
               "name: Qbert mean return at target 14000", "--game Qbert", "- Qbert"]  # fmt: skip
    for needle in needles:
        assert needle in card, needle

    # The run's model, as evaluate_atari.py builds it from checkpoint.pt, and the folder's.
    state = load_checkpoint(run / "checkpoint.pt")
    w = state["model"]
    run_model = build_model(run_cfg, w["head.weight"].shape[0], w["global_pos_emb"].shape[1] - 1)
    run_model.load_state_dict(w)
    loaded = from_pretrained_atari(folder)
    ecfg = eval_config(loaded.pretrained_config, None, None, None, None, None)
    same = ("seed", "eval_episodes", "eval_envs", "eval_max_steps", "game_specs", "model_type")
    assert {k: ecfg[k] for k in same} == {k: run_cfg[k] for k in same}
    cpu = torch.device("cpu")
    ours, theirs = {}, {}
    ours_res = evaluate_games(loaded, ecfg, cpu, None, ours)
    theirs_res = evaluate_games(run_model.eval(), run_cfg, cpu, None, theirs)
    for g in GAMES:
        assert sorted(ours[g]) == sorted(theirs[g]) and len(ours[g]) > 150, g
        assert ours_res[g]["returns"] == theirs_res[g]["returns"] == row[f"eval/{g}/returns"]
    assert any(r > 0 for g in GAMES for r in row[f"eval/{g}/returns"]), "every return is 0"


def test_a_naive_multigame_card_has_no_targets(run):
    """A naive (unconditioned) model's card: its games' returns with no target, in the table
    and in the Hub metadata (the gym half's card_metrics)."""
    from pretrained_atari import model_card

    cfg = json.loads((run / "model" / "config.json").read_text())
    cfg["acting"]["conditioned"] = False
    for g in cfg["acting"]["games"]:
        g["target_return"] = None
    for res in cfg["evaluation"]["games"].values():
        res["target"] = None
    card = model_card(cfg, "naive-dt")
    assert "behaviour cloning (naive) model" in card and "at target" not in card
    scale = cfg["acting"]["games"][1]["rtg_scale"]
    assert "      name: Qbert mean return\n" in card
    assert f"| Qbert | 0 1 2 3 4 5 | {scale:g} | – |" in card
    assert "| Breakout | – | 2 |" in card


def test_export_and_evaluate_atari_play_every_game_or_one(run, tmp_path, monkeypatch):
    """export_atari.py takes the run (the card's evaluation played from the folder: the run's
    returns); evaluate_atari.py plays its games again, --game one of them, from the folder or
    a cached Hub id; push_to_hub.py names its games."""
    import export_atari
    from decision_transformer.run import hub
    from hub_fakes import hub_cache, record_hub_calls

    out = tmp_path / "multi-dt"
    assert run_main(export_atari.main, run, "--out", out).returncode == 0
    ev, row = json.loads((out / "config.json").read_text())["evaluation"], last_eval(run)
    assert "measured_by" not in ev and ev["episode_seeds"] == [123, 124]
    assert {g: ev["games"][g]["returns"] for g in GAMES} == {
        g: row[f"eval/{g}/returns"] for g in GAMES
    }
    before = files_of(out)
    report, gif = tmp_path / "all.json", tmp_path / "qbert.gif"
    proc = run_script(
        "evaluate_atari.py", "--checkpoint", out, "--eval_envs", "1", "--json", report
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(report.read_text())
    assert {g: res["games"][g]["returns"] for g in res["games"]} == {
        g: ev["games"][g]["returns"] for g in GAMES
    }
    assert "| Qbert | 14000 | 2 |" in proc.stdout and files_of(out) == before

    cache = tmp_path / "hub"
    hub_cache(cache, "someone/atari-multi", out)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = run_script("evaluate_atari.py", "--checkpoint", "someone/atari-multi", "--game",
                      "Qbert", "--json", report, "--video", gif, env=offline)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(report.read_text())
    assert list(res["games"]) == ["Qbert"] and "mean over" not in proc.stdout
    assert res["games"]["Qbert"]["returns"] == ev["games"]["Qbert"]["returns"]
    assert res["video"]["game"] == "Qbert" and gif.stat().st_size > 0

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_atari")
    rec = record_hub_calls(monkeypatch)
    assert run_main(hub.main, out, "someone/atari-multi").returncode == 0
    assert rec.sent()[0]["commit_message"] == "Upload atari_dt for Breakout, Qbert"


def test_bad_multigame_folders_and_games_are_one_line(run, tmp_path):
    """A game of a folder without its rtg_scale, an action id past the head, a game not in the
    folder (or the run), a folder of another architecture, a missing weights file, a target for
    a model of one target per game: one line, exit 2, before any episode is played."""
    import evaluate_atari
    from pretrained_atari import from_pretrained_atari

    folder = run / "model"

    def refused(source, needle, *flags):
        assert_one_line_error(run_main(evaluate_atari.main, "--checkpoint", source, *flags), needle)

    def drop_scale(cfg):
        del cfg["acting"]["games"][1]["rtg_scale"]

    no_scale = copy_folder(folder, tmp_path / "no_scale", drop_scale)
    with pytest.raises(UserError, match="game Qbert lacks rtg_scale"):
        from_pretrained_atari(no_scale)
    refused(no_scale, "game Qbert lacks rtg_scale; re-export the model")

    def past_head(cfg):
        cfg["acting"]["games"][0]["action_set"] = [0, 1, 3, 18]

    refused(copy_folder(folder, tmp_path / "past", past_head), "is not ids of the model's 18")

    def twice(cfg):
        cfg["acting"]["games"][1]["game"] = "Breakout"

    refused(copy_folder(folder, tmp_path / "twice", twice), "lists Breakout twice")
    refused(folder, "--game Pong: ", "--game", "Pong")
    refused(folder, "plays Breakout, Qbert; pass one of them", "--game", "Pong")
    refused(run, "--game Pong: ", "--game", "Pong")
    refused(folder, "a multi-game model with one target per game", "--target_return", "5")

    def one_game(cfg):
        acting = cfg["acting"]
        acting.update(game="Breakout", target_return=90.0)
        del acting["games"]

    refused(copy_folder(folder, tmp_path / "one", one_game), "plays Breakout only; drop --game",
            "--game", "Qbert")  # fmt: skip
    gym_like = copy_folder(folder, tmp_path / "gym_like", lambda c: c.update(architecture="mlp_bc"))
    refused(gym_like, "holds a mlp_bc model, not an Atari DT")
    no_weights = copy_folder(folder, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    refused(no_weights, "model.safetensors")
