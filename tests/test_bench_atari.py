"""benchmarks/bench_atari.py --quality on a tiny real --collect replay: --epochs passes, each
capped at --steps, --models leaves models out, and targets it could not check are named as missed
(exit 1); a rerun trains nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli import ROOT
from decision_transformer.run.checkpoint import load_checkpoint


def bench(work: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/bench_atari.py", "--quality", "--skip_reader",
         "--games", "Breakout", "--replay_rows", "5000", "--seeds", "5", "--steps", "3",
         "--episodes", "1", "--max_steps", "20", "--work", str(work), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_epochs_and_models(tmp_path):
    proc = bench(tmp_path, "--epochs", "2", "--models", "DT gpt")
    assert proc.returncode == 1, proc.stderr[-2000:]
    missed = [line for line in proc.stderr.splitlines() if line.startswith("MISSED")]
    assert "MISSED: Breakout DT qwen3: not run (--models), so its targets are unchecked" in missed
    assert "MISSED: Breakout DT gpt vs BC: unchecked (BC not run, --models)" in missed
    assert not (tmp_path / "DT_qwen3_s5").exists() and not (tmp_path / "BC_s5").exists()
    ckpt = tmp_path / "DT_gpt_s5" / "checkpoint.pt"
    trainer = load_checkpoint(ckpt)["trainer"]
    # Two passes of 3 steps each: the cap applies per pass, not to the whole budget.
    assert (trainer["epoch"], trainer["global_step"]) == (2, 6)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| DT gpt |")]
    assert len(rows) == 3 and all("| 6 |" in row for row in rows), proc.stdout
    # A rerun finds the finished training and only evaluates again.
    stamp = ckpt.stat().st_mtime_ns
    again = bench(tmp_path, "--epochs", "2", "--models", "DT gpt")
    assert ckpt.stat().st_mtime_ns == stamp
    assert [r for r in again.stdout.splitlines() if r.startswith("| DT gpt |")] == rows
