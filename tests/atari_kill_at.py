"""run_dt_atari.py's main killed by a real SIGKILL inside its N-th optimizer step (counted from
this process's start), for the Atari resume tests; under torchrun every rank dies in that step.

    python atari_kill_at.py N [run_dt_atari.py flags...]        (cwd: atari/)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "atari"))

import run_dt_atari  # noqa: E402
from mingpt import trainer_atari  # noqa: E402


def main() -> int:
    n, *argv = sys.argv[1:]
    calls = 0
    loss = trainer_atari.action_loss

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == int(n):  # inside the step: its forward runs, its update never happens
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(*args, **kwargs)

    trainer_atari.action_loss = counting
    return run_dt_atari.main(argv)


if __name__ == "__main__":
    sys.exit(main())
