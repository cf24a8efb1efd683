"""benchmarks/bench_gpu.py's CPU part runs on today's code and on its baselines (nothing else runs
it before the first GPU does), and its exit status holds the host-sync targets: at most one per
Qwen3 DT training step, none per Atari training step."""

import os
import subprocess
import sys

from cli import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def row(stdout: str, start: str) -> list[str]:
    (line,) = [x for x in stdout.splitlines() if x.startswith(start)]
    return [c.strip() for c in line.strip("|").split("|")]


def test_cpu_part_runs_and_meets_its_sync_targets():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--skip_cuda"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _, before, now, _, target = row(proc.stdout, "| host syncs / step (max of 4)")
    assert int(now) <= 1 and target == "<= 1"
    _, atari_before, atari_now, target = row(proc.stdout, "| host syncs / step (max of 6)")
    assert int(atari_now) == 0 and target == "0"
    # The baselines were counted by the same counter (a clone without their history says so).
    if "not available" not in proc.stdout:
        assert int(before) > 1 and int(atari_before) > 0
