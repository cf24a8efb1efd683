"""The Atari half's scripts as a user runs them (a subprocess started in atari/), the flags of a
tiny run, and a small replay collected from the real emulator: shared by the Atari tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli import ROOT, script_env

ATARI_DIR = ROOT / "atari"
if str(ATARI_DIR) not in sys.path:  # the Atari scripts import each other by name
    sys.path.insert(0, str(ATARI_DIR))

# A run of a few steps on a 1-layer, 32-wide model over one collected buffer.
TINY = [
    "--num_buffers", "1", "--trajectories_per_buffer", "1", "--num_steps", "300",
    "--context_length", "4", "--batch_size", "4", "--n_layer", "1", "--n_head", "2",
    "--embed_dim", "32", "--num_workers", "0", "--device", "cpu",
]  # fmt: skip


def run_script(
    script: str, *args, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``script`` in atari/ with ``args``; ``env`` adds to the environment."""
    env = {**script_env(), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ATARI_DIR, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def collect_replay(out: Path, game: str = "Breakout") -> Path:
    """One 1200-step buffer of ``game`` in the DQN-Replay layout, played by create_dataset.py
    (Breakout: the scripted player; Qbert: random play; 3 games end in each at seed 1)."""
    proc = run_script("create_dataset.py", "--collect", "--game", game, "--out", out,
                      "--steps_per_buffer", "1200", "--buffers", "1", "--seed", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out
