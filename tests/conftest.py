import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GYM_DIR = ROOT / "gym"
sys.path.insert(0, str(GYM_DIR))
# Offscreen MuJoCo rendering on machines with no display uses software EGL (Debian's mesa).
os.environ.setdefault("MUJOCO_GL", "egl")
