"""run_dt_atari.py --games: one model over two games' collected replays (real ALE Breakout and
Qbert, dopamine's on-disk format): trains on batches mixing both, evaluates per game, resumes
exactly after kill -9; actions go into ALE's full set and back; evaluate_atari.py, plot_atari.py
and results.py on such a run (its model folder: test_export_atari_multigame.py); bad --games
input in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from atari_cli import ATARI_DIR, TINY, run_script
from cli import assert_one_line_error, run_main, script_env
from decision_transformer.run.checkpoint import load_checkpoint

GAMES = ["--games", "Breakout", "Qbert"]
# Breakout's minimal action set is NOOP, FIRE, RIGHT, LEFT: full-set ids 0, 1, 3, 4.
BREAKOUT_IDS = [0, 1, 3, 4]


def strip_times(path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_two_games_train_evaluate_per_game_and_resume_exactly(atari_two_games, tmp_path, capsys):
    import evaluate_atari  # (atari/ is on sys.path once atari_cli is imported)
    import plot_atari
    import results
    import run_dt_atari

    common = [*TINY, "--data_dir_prefix", atari_two_games, "--epochs", "2",
              "--steps_per_epoch", "4", "--save_every", "2", "--eval_episodes", "2",
              "--eval_envs", "2", "--eval_max_steps", "12"]  # fmt: skip
    args = [*common, *GAMES]
    ref = run_script("run_dt_atari.py", *args, "--out_dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert cfg["games"] == ["Breakout", "Qbert"] and cfg["game"] is None
    specs = cfg["game_specs"]
    assert specs["Breakout"]["action_set"] == BREAKOUT_IDS
    assert specs["Qbert"]["action_set"] == [0, 1, 2, 3, 4, 5]  # NOOP FIRE UP RIGHT LEFT DOWN
    assert specs["Breakout"]["target"] == 90 and specs["Qbert"]["target"] == 14000  # paper's
    assert all(s["rtg_scale"] >= 1 for s in specs.values())
    state = load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    assert state["model"]["head.weight"].shape[0] == 18  # one head over the full action set
    rows = strip_times(tmp_path / "ref" / "metrics.jsonl")
    assert len(rows) == 2
    for game in ("Breakout", "Qbert"):  # per game: returns, lengths, target, normalized scores
        assert len(rows[-1][f"eval/{game}/returns"]) == 2
        assert rows[-1][f"eval/{game}/lengths"] == [12, 12]
        assert f"eval/{game}/gamer_normalized" in rows[-1]
    assert "eval/mean_human_normalized" in rows[-1] and "eval/returns" not in rows[-1]
    assert "| Breakout | 90 | 2 |" in ref.stdout and "| Qbert | 14000 | 2 |" in ref.stdout
    # The run's model folder (test_export_atari_multigame.py tests it).
    assert f"model folder: {tmp_path / 'ref' / 'model'}" in ref.stdout

    # kill -9 in the middle, then --resume: the same weights and metrics.
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "run_dt_atari.py", *map(str, args), "--out_dir", str(out)],
        cwd=ATARI_DIR, env={**script_env(), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 180
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    mid = load_checkpoint(out / "checkpoint.pt")["trainer"]
    assert (mid["epoch"], mid["step"]) < (2, 0), "the run finished before it was killed"
    swapped = ["--games", "Qbert", "Breakout"]  # another run: refused before any work
    bad = run_main(run_dt_atari.main, *common, *swapped, "--out_dir", out, "--resume")
    assert_one_line_error(bad, "games ['Breakout', 'Qbert'] -> ['Qbert', 'Breakout']")
    again = run_script("run_dt_atari.py", *args, "--out_dir", out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stdout
    b = load_checkpoint(out / "checkpoint.pt")
    assert b["trainer"]["global_step"] == state["trainer"]["global_step"] == 8
    for k, v in state["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert strip_times(out / "metrics.jsonl") == rows

    # evaluate_atari.py plays every game again as training did (fewer envs at once), and
    # renders the first game's episode 0.
    js, video = tmp_path / "eval.json", tmp_path / "ep0.gif"
    proc = run_script("evaluate_atari.py", "--checkpoint", tmp_path / "ref", "--eval_envs", "1",
                      "--json", js, "--video", video)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(js.read_text())
    for game in ("Breakout", "Qbert"):
        assert res["games"][game]["returns"] == rows[-1][f"eval/{game}/returns"]
        assert res["games"][game]["lengths"] == rows[-1][f"eval/{game}/lengths"]
    assert res["video"]["game"] == "Breakout" and video.stat().st_size > 0
    assert res["video"]["return"] == res["games"]["Breakout"]["returns"][0]
    proc = run_main(evaluate_atari.main, "--checkpoint", tmp_path / "ref", "--target_return", "5")
    assert_one_line_error(proc, "is a multi-game run with one target per game")

    # plot_atari.py: a curve and a table row per game; the seed table refuses.
    png = tmp_path / "curves.png"
    assert plot_atari.main([str(tmp_path / "ref"), "--table", "--out", str(png)]) == 0
    table = capsys.readouterr().out
    assert png.stat().st_size > 0
    assert "| Breakout DT gpt s123 (multi-game) | 90 | 2 |" in table
    assert "| Qbert DT gpt s123 (multi-game) | 14000 | 2 |" in table
    curves = plot_atari.lines(
        cfg, [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").open()]
    )
    assert [name for name, _ in curves] == [
        "Breakout DT gpt s123 (multi-game)",
        "Qbert DT gpt s123 (multi-game)",
    ]
    assert [r["eval/return_mean"] for r in curves[1][1]] == [
        r["eval/Qbert/return_mean"] for r in rows
    ]
    assert_one_line_error(run_main(results.main, tmp_path / "ref"), "is a multi-game run")


class FixedLogits(torch.nn.Module):
    """Stands in for the model in the evaluator: it favours full-set id 17 (DOWNLEFTFIRE, not a
    Breakout action) most and id 4 (Breakout's LEFT, its action 3) next, and records the
    actions it is shown."""

    def __init__(self, context_length: int = 4):
        super().__init__()
        self.cfg = type("Cfg", (), {"context_length": context_length})()
        self.shown: list[torch.Tensor] = []
        self.returns_to_go: list[torch.Tensor] = []

    def encode(self, states):
        return torch.zeros(*states.shape[:-3], 8)

    def forward_encoded(self, s, actions, rtgs, timesteps, mask=None):
        self.shown.append(actions[:, :-1][mask[:, :-1]])  # the past actions, padding aside
        self.returns_to_go.append(rtgs[..., 0][mask])
        logits = torch.zeros(*actions.shape, 18)
        logits[..., 17], logits[..., 4] = 30.0, 20.0
        return logits


def test_actions_go_into_the_full_set_and_back(atari_replay):
    """Training targets are the game's actions as full-set ids; acting restricts the logits to
    the game's ids, plays the game's own action and shows the model the full id."""
    from create_dataset import create_dataset
    from mingpt.evaluate_atari import evaluate
    from mingpt.trainer_atari import WindowDataset
    from multigame import GameSpec, GameWindows, minimal_action_set

    assert minimal_action_set("Breakout") == BREAKOUT_IDS
    data = create_dataset(1, 300, "Breakout", str(atari_replay), 1, cache=False, log=lambda *_: 0)
    windows = WindowDataset(data, 4)
    spec = GameSpec(BREAKOUT_IDS, 90.0, 7.0)
    mapped = GameWindows(windows, spec)
    seen = set()
    for w in range(0, len(windows), 7):
        states, actions, rtgs, timesteps = windows[w]
        m_states, m_actions, m_rtgs, m_timesteps = mapped[w]
        assert torch.equal(m_states, states) and torch.equal(m_timesteps, timesteps)
        assert m_actions.tolist() == [BREAKOUT_IDS[a] for a in actions.tolist()]
        assert torch.allclose(m_rtgs * 7.0, rtgs)
        seen.update(actions.tolist())
    assert {2, 3} <= seen  # RIGHT and LEFT, whose ids differ from their indices

    model = FixedLogits()
    trace: list = []
    evaluate(model, "Breakout", 90.0, 1, 1, 0, torch.device("cpu"), 12, trace=trace,
             action_set=BREAKOUT_IDS, rtg_scale=7.0)  # fmt: skip
    played = [a for *_, a in trace]
    assert played == [3] * 12  # LEFT, as Breakout numbers it; never id 17
    shown = torch.cat(model.shown).tolist()
    assert len(shown) > 12 and set(shown) == {4}  # the model sees LEFT's full-set id
    # Returns-to-go in the game's scale: the target 90 over 7, falling by raw reward / 7.
    assert torch.allclose(model.returns_to_go[0], torch.tensor([90.0 / 7.0]))
    assert all(0 < float(r.max()) <= 90.0 / 7.0 + 1e-6 for r in model.returns_to_go)


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--games", "Breakout"], "needs two or more; for one game use --game"),
        (["--games", "Breakout", "Qbert", "Breakout"], "--games lists Breakout twice"),
        (["--game", "Pong", *GAMES], "--games names every game: drop --game"),
        (["--target_return", "5", *GAMES], "give --game_targets GAME=RETURN"),
        (["--games", "Breakout", "MsPacman"], "MsPacman has no paper target; pass --game_targets"),
        ([*GAMES, "--game_targets", "Qbert:500"], "--game_targets Qbert:500: give GAME=RETURN"),
        ([*GAMES, "--game_targets", "Pong=5"], "Pong is not one of --games"),
        ([*GAMES, "--seeds", "1", "2"], "--seeds with --games is not supported yet"),
        ([*GAMES, "--preset", "original"], "--preset sets one game's run.sh settings"),
        (["--game_targets", "Breakout=5"], "--game_targets is for --games"),
        (["--games", "Breakout", "NoSuchGame"], "no ALE game 'NoSuchGame'"),
    ],
)
def test_bad_games_input_is_one_line(flags, needle, tmp_path):
    import run_dt_atari

    proc = run_main(
        run_dt_atari.main,
        *TINY, *flags, "--data_dir_prefix", tmp_path / "none", "--out_dir", tmp_path / "run",
    )  # fmt: skip
    assert_one_line_error(proc, needle)


def test_a_missing_game_replay_is_one_line(atari_replay, tmp_path):
    """A real process: Breakout's replay is there, Qbert's is not: the line names the file
    looked for and the --collect command, before any training."""
    proc = run_script("run_dt_atari.py", *TINY, *GAMES, "--data_dir_prefix", atari_replay,
                      "--out_dir", tmp_path / "run")  # fmt: skip
    assert_one_line_error(proc, "no DQN-Replay buffers for Qbert")
    assert "--collect --game Qbert" in proc.stderr
    assert not np.any([p.name == "checkpoint.pt" for p in tmp_path.rglob("*")])
