"""benchmarks/bench_auto_target.py (issue 33, measurement 3): its pooled mean and standard error
are those of every episode of every seed together; its goal reads the best fixed target's; --plan
trains nothing; a task that is not ENV:DATASET is one line, exit 2. (--smoke runs the whole path:
benchmarks/README.md.)"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from argparse import Namespace

import numpy as np
from cli import ROOT

BENCH = ROOT / "benchmarks" / "bench_auto_target.py"


def bench():
    spec = importlib.util.spec_from_file_location("bench_auto_target", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_pooled_mean_and_standard_error_are_all_episodes_together():
    b = bench()
    rng = np.random.default_rng(0)
    episodes = [rng.normal(loc, 30.0, size=10) for loc in (100.0, 160.0, 130.0)]  # 3 seeds
    runs = [[float(e.mean()), float(e.std())] for e in episodes]  # what metrics.jsonl holds
    mean, se = b.pooled(runs, 10)
    every = np.concatenate(episodes)
    assert np.isclose(mean, every.mean())
    assert np.isclose(se, every.std(ddof=1) / np.sqrt(len(every)))


def test_targets_are_read_off_the_metrics_row_without_the_checkpoint():
    # A multi-task row: each task's targets under its own prefix; max > p90 whatever the order
    # the keys were logged in, and a row that coincides (max == p90) serves both.
    b = bench()
    row = {
        "evaluation/hopper-ars-100k/target_1338.5_return_mean": 1.0,
        "evaluation/hopper-ars-100k/target_auto_return_mean": 2.0,
        "evaluation/hopper-ars-100k/target_1474_return_mean": 3.0,
        "evaluation/walker2d-ars-100k/target_424_return_mean": 4.0,
        "evaluation/walker2d-ars-100k/target_auto_return_mean": 5.0,
    }
    keys = b.target_keys(row, "evaluation/hopper-ars-100k/", b.TARGETS)
    stem = "evaluation/hopper-ars-100k/target_"
    assert keys == {"auto": f"{stem}auto_return", "max": f"{stem}1474_return",
                    "p90": f"{stem}1338.5_return"}  # fmt: skip
    walker = b.target_keys(row, "evaluation/walker2d-ars-100k/", b.TARGETS)
    assert walker["max"] == walker["p90"] == "evaluation/walker2d-ars-100k/target_424_return"
    single = {"evaluation/target_9_return_mean": 0.0, "evaluation/target_12_return_mean": 0.0}
    assert b.target_keys(single, "evaluation/", ["max", "p90"]) == {
        "max": "evaluation/target_12_return", "p90": "evaluation/target_9_return"}  # fmt: skip


def test_auto_meets_the_goal_within_one_standard_error_of_the_best_fixed_target():
    b = bench()
    args = Namespace(models=["qwen3"], tasks=["hopper:x"], episodes=4)

    def result(auto: float, best: float, spread: float):
        at = {"auto": [auto, spread], "max": [best, spread], "p90": [best - 50, spread]}
        return [b.Result(kind, "qwen3", s, ["hopper:x"], returns={"hopper:x": at})
                for kind in ("single", "multi") for s in (0, 1)]  # fmt: skip

    se = 20.0 / np.sqrt(7)  # 8 episodes with population std 20: sample std 20 sqrt(8/7)
    text, missed, rows = b.table(result(1000 - 0.9 * se, 1000, 20.0), args)
    assert missed == [] and rows[0]["best"] == "max" and "| yes |" in text
    _, missed, _ = b.table(result(1000 - 1.1 * se, 1000, 20.0), args)
    assert missed == ["hopper:x qwen3 single", "hopper:x qwen3 multi"]


def test_plan_trains_nothing_and_a_bad_task_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, str(BENCH), "--out", str(tmp_path / "out")]
    plan = subprocess.run([*run, "--plan"], capture_output=True, text=True, env=env)
    assert plan.returncode == 0 and "10 runs" in plan.stdout
    assert not (tmp_path / "out").exists()
    bad = subprocess.run([*run, "--tasks", "hopper"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "is not ENV:DATASET" in bad.stderr
