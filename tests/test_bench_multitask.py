"""benchmarks/bench_multitask.py on a tiny sweep (two bodies, two seeds, the Qwen3 DT and the
multi-task-only 4x model) through the real training scripts: its tables and exit status agree
with the run folders it made, read here independently; a second call reads the finished runs
instead of training them again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli import ROOT, carry_over
from rollouts import write_dataset

BENCH = ROOT / "benchmarks" / "bench_multitask.py"
TASKS = ["hopper:medium", "walker2d:medium"]
MODELS = ["qwen3", "qwen3-4x"]


def sweep(data_dir, out, *extra):
    cmd = [
        sys.executable, str(BENCH), "--tasks", *TASKS, "--data_dir", str(data_dir),
        "--out", str(out), "--tiny", "--models", *MODELS, "--steps", "4", "--iters", "2",
        "--episodes", "2", "--batch", "8", "--jobs", "2", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    write_dataset(data_dir, "hopper", "medium", episodes=6, max_steps=40)
    write_dataset(data_dir, "walker2d", "medium", episodes=5, max_steps=60)
    out = tmp_path_factory.mktemp("sweep")
    return data_dir, out, sweep(data_dir, out)


def last_return_at_max(run, task: str | None) -> float:
    """The run's last evaluation at its first target (max), read from its own files."""
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    if task is None:
        return row[f"evaluation/target_{ckpt['eval_targets'][0]:g}_return_mean"]
    target = ckpt["eval_targets"][task][0]
    return row[f"evaluation/{task}/target_{target:g}_return_mean"]


def test_table_and_exit_status_follow_the_runs(swept):
    data_dir, out, proc = swept
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    runs = out / "runs"
    missed = []
    for task in ("hopper-medium", "walker2d-medium"):
        single = [last_return_at_max(runs / f"{task}-qwen3-seed{s}", None) for s in (0, 1)]
        multi = [last_return_at_max(runs / f"multi-2tasks-qwen3-seed{s}", task) for s in (0, 1)]
        # The multi-task run trained for the sum of the single-task runs' steps.
        steps = json.loads((runs / "multi-2tasks-qwen3-seed0" / "metrics.jsonl").read_text()
                           .splitlines()[-1])["step"]  # fmt: skip
        assert steps == 2 * 4
        s, m = np.mean(single), np.mean(multi)
        line = next(
            x for x in proc.stdout.splitlines() if x.startswith(f"| {task.replace('-', ':')} ")
        )
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[2] == f"{np.mean(single):.0f} ± {np.std(single):.0f}"
        assert cells[3] == f"{np.mean(multi):.0f} ± {np.std(multi):.0f}"
        assert cells[4] == (f"{m / s:.2f}" if s > 0 else "–")
        if m < s - 0.1 * abs(s):
            missed.append(task.replace("-", ":"))
    assert proc.returncode == (1 if missed else 0)
    for task in missed:
        assert task in proc.stderr
    record = json.loads((out / "multitask.json").read_text())
    assert record["missed"] == missed and len(record["runs"]) == 8


def test_the_larger_model_is_multi_task_only_and_compared_per_task(swept):
    data_dir, out, proc = swept
    runs = out / "runs"
    # Measurement 2 trains the 4x model over all tasks at once, never one task alone.
    assert not list(runs.glob("*-medium-qwen3-4x-seed*"))
    config = json.loads((runs / "multi-2tasks-qwen3-4x-seed0" / "config.json").read_text())
    assert config["embed_dim"] == 64  # --tiny's 4x model, not the small one's 32
    for task in ("hopper-medium", "walker2d-medium"):
        single, multi, large = (
            [last_return_at_max(runs / f"{what}-seed{s}", key) for s in (0, 1)]
            for what, key in (
                (f"{task}-qwen3", None),
                ("multi-2tasks-qwen3", task),
                ("multi-2tasks-qwen3-4x", task),
            )
        )
        rows = [x for x in proc.stdout.splitlines() if x.startswith(f"| {task.replace('-', ':')} ")]
        cells = [c.strip() for c in rows[-1].split("|")[1:-1]]  # the measurement-2 table's row
        assert cells[1:4] == [f"{np.mean(v):.0f} ± {np.std(v):.0f}" for v in (single, multi, large)]
        assert cells[4] == ("yes" if np.mean(large) > np.mean(multi) else "no")
        assert cells[5] == ("yes" if np.mean(large) > np.mean(single) else "no")


def test_a_second_call_reads_the_finished_runs(swept):
    data_dir, out, first = swept
    rows = sorted((out / "runs").glob("*/metrics.jsonl"))
    before = [p.stat().st_mtime_ns for p in rows]
    again = sweep(data_dir, out)
    assert again.returncode == first.returncode
    assert [p.stat().st_mtime_ns for p in rows] == before
    # The same table (the progress lines before it come in the threads' order).
    tables = [[x for x in p.stdout.splitlines() if x.startswith("|")] for p in (first, again)]
    assert tables[0] and tables[1] == tables[0]


def test_a_measurement_carried_over_without_its_weights_is_read_not_retrained(swept, tmp_path):
    # What a clone on the next machine holds: the run folders' logs, none of their weights.
    data_dir, out, first = swept
    kept = carry_over(out, tmp_path, "benchmarks/results/multitask")
    assert any(p.name == "metrics.jsonl" for p in kept)
    assert not any(p.suffix == ".pt" for p in kept)
    again = sweep(data_dir, tmp_path)
    assert again.returncode == first.returncode, again.stderr[-2000:]
    assert not list(tmp_path.rglob("*.pt"))  # nothing was trained again
    tables = [[x for x in p.stdout.splitlines() if x.startswith("|")] for p in (first, again)]
    assert tables[0] and tables[1] == tables[0]


def test_plan_prints_the_estimate_and_trains_nothing(tmp_path):
    proc = sweep(tmp_path, tmp_path / "out", "--plan")
    assert proc.returncode == 0, proc.stderr
    assert "8 runs (2 single-task + 1 multi-task per model and seed" in proc.stdout
    assert "qwen3: 32 steps" in proc.stdout  # 2 seeds x (2 single runs + 1 of 2x4 steps) x 4
    assert "qwen3-4x: 16 steps" in proc.stdout  # 2 seeds x 1 multi-task run of 2x4 steps
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tasks", [["hopper"], ["hopper:missing"]])
def test_bad_tasks_are_one_line_before_any_training(tmp_path, tasks):
    cmd = [sys.executable, str(BENCH), "--tasks", *tasks, "--data_dir", str(tmp_path),
           "--out", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()
