import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GYM_DIR = ROOT / "gym"
sys.path.insert(0, str(GYM_DIR))
# Offscreen MuJoCo rendering on machines with no display uses software EGL (Debian's mesa).
os.environ.setdefault("MUJOCO_GL", "egl")


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
