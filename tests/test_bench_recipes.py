"""benchmarks/bench_recipes.py on a tiny sweep through the real training scripts: the tables and
the exit status it reports agree with the run folders it made, read here independently."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli import ROOT
from decision_transformer.data.pickle_io import load_paths_file
from rollouts import write_dataset

BENCH = ROOT / "benchmarks" / "bench_recipes.py"
SEEDS = (0, 1)


def sweep(data_dir, out, *extra):
    cmd = [
        sys.executable, str(BENCH), "hopper:medium", "--data_dir", str(data_dir), "--out", str(out),
        "--tiny", "--recipes", "readme", "--models", "qwen3", "bc", "--steps", "6", "--iters", "2",
        "--episodes", "2", "--jobs", "2", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    write_dataset(data_dir, "hopper", "medium", episodes=12, seed=0)
    out = tmp_path_factory.mktemp("sweep")
    proc = sweep(data_dir, out, "--curves", str(out / "figures"))
    return data_dir, out, proc


def sorted_return_keys(row: dict) -> list[str]:
    """An iteration's mean-return keys, highest target first."""
    return sorted(
        (k for k in row if k.startswith("evaluation/target_") and k.endswith("_return_mean")),
        key=lambda k: float(k.removeprefix("evaluation/target_").removesuffix("_return_mean")),
        reverse=True,
    )


def at_best_iteration(run_dir) -> list[float]:
    """Returns at the targets, highest target first, in the iteration with the lowest validation
    error (the one best.pt keeps)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["validation/action_error"])
    targets = sorted(
        (k for k in best if k.startswith("evaluation/target_") and k.endswith("_return_mean")),
        key=lambda k: float(k.removeprefix("evaluation/target_").removesuffix("_return_mean")),
        reverse=True,
    )
    return [best[k] for k in targets]


def test_summary_and_exit_status_follow_the_runs(swept):
    data_dir, out, proc = swept
    assert proc.returncode in (0, 1), proc.stderr
    returns = [float(sum(p["rewards"])) for p in load_paths_file(data_dir / "hopper-medium-v2.pkl")]
    p90 = np.percentile(returns, 90)

    lines = {}
    for model in ("qwen3", "bc"):
        runs = [out / "hopper-medium" / "readme" / f"{model}-seed{s}" for s in SEEDS]
        per_seed = np.array([at_best_iteration(run) for run in runs])
        assert per_seed.shape == (2, 3)
        mean, std = per_seed.mean(0), per_seed.std(0, ddof=1)
        cells = " | ".join(f"{m:.0f} ± {s:.0f}" for m, s in zip(mean, std))
        line = f"| hopper:medium | readme | {model} | 2/2 | {cells} | {p90:.0f} |"
        assert line in proc.stdout, (line, proc.stdout)
        lines[model] = mean

    # The target is judged on the Qwen3 DT's seed means: best return >= p90, rising with target.
    mean = lines["qwen3"]
    met = mean[0] >= p90 and mean[0] > mean[1] > mean[2]
    assert proc.returncode == (0 if met else 1), proc.stderr
    assert ("readme: met on every dataset" in proc.stdout) == met
    assert ("missed target" in proc.stderr) == (not met)
    assert (out / "figures" / "hopper-medium-qwen3.png").stat().st_size > 0
    saved = json.loads((out / "recipes.json").read_text())
    assert len(saved["rows"]) == 4 and all(not r["error"] for r in saved["rows"])


def test_table_only_trains_nothing_and_counts_what_has_not_run(swept):
    data_dir, out, _ = swept
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    proc = sweep(data_dir, out, "--table_only", "--seeds", "0", "1", "2")
    assert proc.returncode == 1  # seed 2 has not run
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == before
    assert "2 more combinations were asked for but have not run." in proc.stdout
    assert "| 2/3 |" in proc.stdout  # the seed mean counts the seeds that ran
    assert "seed 2: not run" in proc.stdout


def test_return_selected_recipe_is_reported_by_a_fresh_evaluation_of_best_pt(swept):
    """readme-ret keeps best.pt by the in-run return at the top target; the table reports best.pt
    played again on resets the run never saw (the in-run number chose it, so it flatters it)."""
    data_dir, out, _ = swept
    extra = ("--recipes", "readme-ret", "--models", "qwen3", "--seeds", "0", "--iters", "3")
    proc = sweep(data_dir, out, *extra)
    assert proc.returncode in (0, 1), proc.stderr
    run = out / "hopper-medium" / "readme-ret" / "qwen3-seed0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    top = sorted_return_keys(rows[0])[0]
    in_run = [r[top] for r in rows]
    chosen = in_run.index(max(in_run)) + 1
    assert torch.load(run / "best.pt", weights_only=True)["iteration"] == chosen

    fresh = json.loads((run / "eval-best-fresh.json").read_text())
    assert fresh["iteration"] == chosen
    played = {r["target"]: r["return_mean"] for r in fresh["targets"]}
    assert not set(fresh["episode_seeds"]) & {0, 1}  # the run's own episodes: seed 0, 2 of them
    returns = [played[t] for t in sorted(played, reverse=True)]
    cells = " | ".join(f"{x:.0f}" for x in returns)
    assert f"| hopper:medium | readme-ret | qwen3 | 1/1 | {cells} |" in proc.stdout, proc.stdout
    assert f"| {chosen} | {cells} | {max(in_run):.0f} |" in proc.stdout  # and the in-run R@max
    (row,) = json.loads((out / "recipes.json").read_text())["rows"]
    assert row["returns"] == returns and row["best_iteration"] == chosen
    assert row["selected_returns"] == [rows[chosen - 1][k] for k in sorted_return_keys(rows[0])]
    assert row["returns"] != row["selected_returns"]  # other resets: the test tells them apart

    # Rerun: read, neither retrained nor evaluated again.
    before = (run / "eval-best-fresh.json").stat().st_mtime_ns
    again = sweep(data_dir, out, *extra)
    assert again.returncode == proc.returncode
    assert (run / "eval-best-fresh.json").stat().st_mtime_ns == before
    assert f"| hopper:medium | readme-ret | qwen3 | 1/1 | {cells} |" in again.stdout


def test_plan_counts_a_suite_dataset_not_built_yet(tmp_path):
    """--plan needs only step counts: a suite dataset not built yet is planned at its nominal
    size, naming the command that builds it; any other missing dataset is still an error."""
    cmd = [sys.executable, str(BENCH), "--data_dir", str(tmp_path), "--recipes", "readme",
           "readme-ret", "--models", "qwen3", "--seeds", "0", "1", "--plan"]  # fmt: skip
    proc = subprocess.run([*cmd, "humanoid:mixed-20k"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "make_suite.py --name humanoid-mixed-20k" in proc.stdout
    assert "planned at its 20000 steps" in proc.stdout and "2 runs;" in proc.stdout
    assert "readme: no runs of its own, read from readme-ret's" in proc.stdout  # same training
    proc = subprocess.run([*cmd, "humanoid:nothing"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "humanoid:nothing" in proc.stderr


def test_shared_training_and_the_comparison_with_the_originals_defaults(tmp_path, swept):
    """readme and readme-ret differ only in --select_by: one run serves both, the readme row is
    that run's returns at its lowest validation error. Every recipe's mean R@max is set against
    the original's with the standard error of the difference, and a recipe worse by more than
    two of them is named."""
    data_dir, _, _ = swept
    out = tmp_path / "sweep"
    extra = ("--recipes", "original", "readme", "readme-ret", "--models", "qwen3")
    proc = sweep(data_dir, out, *extra)
    assert proc.returncode in (0, 1), proc.stderr
    assert not (out / "hopper-medium" / "readme").exists()  # no training of its own

    def runs(recipe):
        return [out / "hopper-medium" / recipe / f"qwen3-seed{s}" for s in SEEDS]

    shared = [at_best_iteration(run) for run in runs("readme-ret")]
    for seed, returns in zip(SEEDS, shared):
        cells = " | ".join(f"{x:.0f}" for x in returns)
        assert f"| hopper:medium | readme | qwen3 | {seed} | 6 |" in proc.stdout
        assert f"| {cells} | – |" in proc.stdout.split(f"| readme | qwen3 | {seed} |")[1]

    def top_of(report):
        return max(report["targets"], key=lambda t: t["target"])["return_mean"]

    original = [at_best_iteration(run)[0] for run in runs("original")]
    reports = [json.loads((r / "eval-best-fresh.json").read_text()) for r in runs("readme-ret")]
    fresh = [top_of(report) for report in reports]
    readme = [r[0] for r in shared]
    worse = []
    for name, mine in (("readme", readme), ("readme-ret", fresh)):
        diff = np.mean(mine) - np.mean(original)
        se = np.sqrt(np.var(mine, ddof=1) / 2 + np.var(original, ddof=1) / 2)
        row = [x for x in proc.stdout.splitlines() if x.startswith(f"| hopper:medium | {name} |")]
        assert row[0].endswith(f"| {diff:+.0f} ± {se:.0f} |"), row
        if diff + 2 * se < 0:
            worse.append(name)
        verdict = "worse beyond 2 SE on hopper:medium" if name in worse else "never worse"
        assert f"{name} against original: {verdict}" in proc.stdout
    saved = json.loads((out / "recipes.json").read_text())["worse_than_original"]
    assert {k for k, v in saved.items() if v} == set(worse)
