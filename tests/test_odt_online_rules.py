"""What the online phase trains on and keeps, on a real Humanoid run (issue 32): the replay buffer
starts from the training episodes only (--val_episodes held out, --pct_traj applied), best.pt
ranks evaluated online rounds with the offline iterations by return, the online updates follow
their own learning-rate schedule (never the ended cosine), and a run killed inside the online
phase resumes all three exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import TINY, assert_one_line_error, run_main, run_script
from decision_transformer.data.holdout import split_episodes
from decision_transformer.data.loading import load_dataset
from decision_transformer.data.sampler import top_trajectories
from decision_transformer.run import experiment
from decision_transformer.run.run import lr_factor
from rollouts import write_dataset

KILL_AT = str(Path(__file__).resolve().parent / "kill_at.py")
EPISODES, VAL, PCT, SEED = 8, 2, 0.6, 3
OFFLINE_ITERS, STEPS, ROUNDS, UPDATES = 2, 5, 3, 3  # STEPS: TINY's --num_steps_per_iter
LR, ONLINE_WARMUP = 1e-4, 4
TARGET = "evaluation/target_6000_return_mean"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=EPISODES, max_steps=40)
    return d


def flags(data_dir) -> list:
    return [
        "--env", "humanoid", "--data_dir", str(data_dir), *TINY,
        "--max_iters", str(OFFLINE_ITERS), "--seed", str(SEED), "-lr", str(LR),
        "--policy", "stochastic", "--online_rounds", str(ROUNDS),
        "--online_updates", str(UPDATES), "--online_episodes", "2",
        # Rounds 2 and 3 are evaluated; round 1 is not, so it is no best.pt candidate.
        "--online_eval_every", "2",
        # Room for every offline episode and every collected one: none leaves the buffer.
        "--buffer_size", "30",
        "--val_episodes", str(VAL), "--val_windows", "8", "--pct_traj", str(PCT),
        "--select_by", "return@6000",
        # Offline: warmup then a cosine that ends with the offline phase.
        "--warmup_steps", "2", "--lr_decay", "cosine",
        "--online_warmup_steps", str(ONLINE_WARMUP),
    ]  # fmt: skip


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("online") / "run"
    run_script("experiment.py", *flags(data_dir), "--out_dir", out, check=True)
    return out


def test_buffer_starts_from_the_training_episodes_only(data_dir, run):
    dataset = load_dataset(data_dir, "humanoid", "medium")
    train, held_out = split_episodes(VAL, EPISODES, SEED)
    drawn = top_trajectories(dataset, PCT, train)  # what offline training draws from
    assert 0 < len(drawn) < len(train)  # the --pct_traj cut bites in this setting
    buffer = load(run / "checkpoint.pt")["online"]["buffer"]
    offline = buffer["offline_episodes"].numpy()
    assert buffer["num_added"] == 2 * ROUNDS and len(buffer["lengths"]) == 2 * ROUNDS
    assert not set(offline) & set(held_out)  # validation/action_error stays on unseen episodes
    assert sorted(offline) == sorted(drawn)
    # Worst first, as the FIFO drops them.
    assert np.all(np.diff(dataset.returns[offline]) >= 0)


def test_best_pt_ranks_evaluated_online_rounds_by_return(run):
    got = rows(run)
    assert [r["iteration"] for r in got] == list(range(1, OFFLINE_ITERS + ROUNDS + 1))
    evaluated = [r for r in got if TARGET in r]
    # Offline iterations 1-2, online rounds 2-3 (iterations 4-5); round 1 was not evaluated.
    assert [r["iteration"] for r in evaluated] == [1, 2, 4, 5]
    best = max(evaluated, key=lambda r: r[TARGET])  # the first of equals, as the selection
    ckpt = load(run / "checkpoint.pt")
    assert ckpt["selection"]["criterion"] == "return@6000"
    assert ckpt["selection"]["best_iteration"] == best["iteration"]
    assert ckpt["selection"]["best_value"] == best[TARGET]
    kept = load(run / "best.pt")
    assert kept["iteration"] == best["iteration"]
    # Overfitting is watched offline only: the history holds the offline iterations' errors.
    assert len(ckpt["selection"]["history"]) == OFFLINE_ITERS


def test_online_updates_follow_their_own_schedule(run):
    got = rows(run)
    online = [r for r in got if "online/round" in r]
    # The logged rate is the last update's of the round: online update 3r (1-based) of the
    # online warmup, then the peak, whatever the offline cosine ended at.
    want = [LR * min(UPDATES * r / ONLINE_WARMUP, 1.0) for r in range(1, ROUNDS + 1)]
    assert [r["training/learning_rate"] for r in online] == pytest.approx(want, rel=1e-6)
    # The offline phase keeps its cosine: its last step is near the tenth.
    assert got[OFFLINE_ITERS - 1]["training/learning_rate"] < 0.2 * LR


def test_lr_factor_online_is_warmup_then_constant():
    # The default (0): the run's warmup continued over both phases, then the peak, as the ODT
    # reference's one schedule (5,000 pretraining steps inside a 10,000-step warmup).
    for decay in ("none", "cosine"):
        assert lr_factor(5000, 10000, 5000, decay) == pytest.approx(5001 / 10000)
        assert lr_factor(9999, 10000, 5000, decay) == 1.0
        assert lr_factor(20000, 10000, 5000, decay) == 1.0
        # The warmup done offline: the peak from the first online step on.
        assert lr_factor(30000, 100, 30000, decay) == 1.0
    # A warmup of its own: from 1/N at the first online step.
    assert lr_factor(300, 10, 300, "cosine", online_warmup=50) == pytest.approx(1 / 50)
    assert lr_factor(324, 10, 300, "cosine", online_warmup=50) == pytest.approx(25 / 50)
    assert lr_factor(400, 10, 300, "cosine", online_warmup=50) == 1.0
    # The offline phase is unchanged by either: a cosine to the tenth.
    assert lr_factor(299, 10, 300, "cosine", online_warmup=50) == pytest.approx(0.1, abs=1e-4)


def test_kill_9_in_the_online_phase_then_resume_keeps_buffer_best_and_schedule(
    data_dir, run, tmp_path
):
    out = tmp_path / "run"
    args = [*flags(data_dir), "--out_dir", str(out)]
    # Inside round 3's updates (after round 2, the evaluated one, was checkpointed).
    n = OFFLINE_ITERS * STEPS + 2 * UPDATES + 2
    killed = run_script(KILL_AT, "step", n, "gpt2", *args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert load(out / "checkpoint.pt")["iteration"] == OFFLINE_ITERS + 2
    run_script("experiment.py", *args, "--resume", check=True)
    for got, want in zip(rows(out), rows(run), strict=True):
        assert {k: v for k, v in got.items() if not k.startswith("time/")} == {
            k: v for k, v in want.items() if not k.startswith("time/")
        }
    a, b = load(out / "checkpoint.pt"), load(run / "checkpoint.pt")
    assert a["selection"] == b["selection"]
    assert a["scheduler"] == b["scheduler"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert torch.equal(
        a["online"]["buffer"]["offline_episodes"], b["online"]["buffer"]["offline_episodes"]
    )
    best_a, best_b = load(out / "best.pt"), load(run / "best.pt")
    assert best_a["iteration"] == best_b["iteration"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_b["model"])


BAD = {
    "val_error_online": (
        [
            "--policy",
            "stochastic",
            "--online_rounds",
            "1",
            "--val_episodes",
            "2",
            "--select_by",
            "val_error",
        ],
        "--select_by val_error cannot rank online rounds",
    ),  # fmt: skip
    "online_warmup_negative": (
        ["--policy", "stochastic", "--online_rounds", "1", "--online_warmup_steps", "-1"],
        "--online_warmup_steps must be >= 0",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_online_selection_and_schedule_flags(data_dir, tmp_path, case):
    args, needle = BAD[case]
    proc = run_main(
        experiment.main,
        "--env", "humanoid", "--data_dir", data_dir, *TINY, "--out_dir", tmp_path / "run", *args,
    )  # fmt: skip
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


def test_a_run_that_recorded_the_val_error_default_resumes_with_online_rounds(data_dir, tmp_path):
    """--val_episodes settles --select_by to val_error offline (and did so in online runs too,
    before online rounds were ranked by return; val_error is now refused with online rounds).
    A run that recorded it resumes with online rounds: one warning, best.pt stays the offline
    iteration the validation error chose."""
    out = tmp_path / "run"
    args = [
        "--env", "humanoid", "--data_dir", str(data_dir), *TINY, "--seed", str(SEED),
        "--policy", "stochastic", "--online_updates", "2", "--online_episodes", "1",
        "--val_episodes", str(VAL), "--val_windows", "8", "--out_dir", str(out),
    ]  # fmt: skip
    run_script("experiment.py", *args, check=True)
    assert load(out / "checkpoint.pt")["config"]["select_by"] == "val_error"
    best = (out / "best.pt").read_bytes()

    proc = run_script("experiment.py", *args, "--online_rounds", "2", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("warning: this run began")]
    assert len(warnings) == 1 and "--select_by return@TARGET" in warnings[0]
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["iteration"] == 2 + 2  # TINY's two offline iterations, then both rounds
    assert ckpt["config"]["select_by"] is None
    assert (out / "best.pt").read_bytes() == best
