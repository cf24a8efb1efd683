import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

# One OpenMP thread for the test process and every script it starts (they inherit the
# environment): the suite's models are tiny, so a second thread buys nothing, and on a busy
# 2-core machine its barriers spin while the other thread waits to be scheduled (seen: a 3-
# iteration run 24 s of CPU with two threads, 3.4 s with one). Set before torch is imported,
# which reads it once; OMP_NUM_THREADS=2 python -m pytest still runs the suite with two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GYM_DIR = ROOT / "gym"
sys.path.insert(0, str(GYM_DIR))
# Offscreen MuJoCo rendering on machines with no display uses software EGL (Debian's mesa).
os.environ.setdefault("MUJOCO_GL", "egl")

# MuJoCo appends its warnings (e.g. gymnasium's half_cheetah.xml uses the deprecated
# 'settotalmass') to MUJOCO_LOG.TXT in the working directory, i.e. the checkout; route them to
# Python warnings instead, where pytest reports them. (Imported only now: MUJOCO_GL must be set
# before mujoco loads.)
import mujoco  # noqa: E402

mujoco.set_mju_user_warning(lambda message: warnings.warn(f"MuJoCo: {message}", stacklevel=1))


def _checkout_files() -> set[str]:
    """Untracked and ignored files in the checkout, caches aside."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    caches = ("__pycache__", ".pytest_cache", ".ruff_cache")
    return {
        line[3:]
        for line in out.splitlines()
        if line[:2] in ("??", "!!") and not any(c in line for c in caches)
    }


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """The suite writes only under pytest's tmp_path: a MUJOCO_LOG.TXT, a run folder or a
    dataset left in the checkout fails it."""
    before = _checkout_files()
    yield
    left = sorted(_checkout_files() - before)
    assert not left, f"the tests left files in the checkout: {left}"


@pytest.fixture
def one_thread():
    """For tiny models: a second OpenMP thread buys nothing, and on a busy 2-core machine its
    barriers can make every op wait for a descheduled thread (seen: 25x slower steps)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def atari_replay(tmp_path_factory) -> Path:
    """A small Breakout replay collected from the real emulator, for the Atari tests' runs."""
    from atari_cli import collect_replay

    return collect_replay(tmp_path_factory.mktemp("atari_replay"))


@pytest.fixture(scope="session")
def atari_two_games(atari_replay, tmp_path_factory) -> Path:
    """A replay folder with two games for the multi-game runs: the Breakout replay above (linked)
    and a small Qbert replay collected from the real emulator (random play, short games)."""
    from atari_cli import collect_replay

    out = tmp_path_factory.mktemp("atari_two_games")
    (out / "Breakout").symlink_to(atari_replay / "Breakout", target_is_directory=True)
    return collect_replay(out, "Qbert")
