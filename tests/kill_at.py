"""Run experiment.py's main with a real SIGKILL at an exact moment, for the resume tests.

    python kill_at.py MOMENT N BACKBONE [experiment flags...]      (cwd: gym/)

MOMENT is one of: ``step`` (inside the N-th optimizer step), ``eval`` (inside the N-th
evaluation call), ``checkpoint`` (inside the N-th checkpoint write, after its temp file is
written and before the rename). The process kills itself with SIGKILL, so nothing gets to clean
up: exactly what a `kill -9` or an OOM killer does.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gym"))

from decision_transformer.run import checkpoint, evaluation, experiment  # noqa: E402
from decision_transformer.training.trainer import Trainer  # noqa: E402


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def counting(fn, n: int):
    calls = 0

    def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            die()
        return fn(*args, **kwargs)

    return wrapped


def main() -> int:
    moment, n, backbone, *argv = sys.argv[1:]
    n = int(n)
    if moment == "step":
        Trainer.optimize_step = counting(Trainer.optimize_step, n)
    elif moment == "eval":
        evaluation.evaluate_returns = counting(evaluation.evaluate_returns, n)
    elif moment == "checkpoint":
        # fsync runs once per checkpoint, between writing the temp file and renaming it.
        checkpoint.os.fsync = counting(os.fsync, n)
    else:
        raise SystemExit(f"unknown moment {moment}")
    return experiment.main(argv, backbone=backbone)


if __name__ == "__main__":
    sys.exit(main())
