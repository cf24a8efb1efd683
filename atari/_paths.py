"""Put the gym half on ``sys.path`` so the Atari half imports its backbones and run helpers
(``decision_transformer.models.qwen3_transformer``, ``run.checkpoint``, ...) instead of copying
them. Imported for its side effect by every Atari module that needs the gym package."""

from __future__ import annotations

import sys
from pathlib import Path

ATARI_DIR = Path(__file__).resolve().parent
GYM_DIR = ATARI_DIR.parent / "gym"

for _p in (str(ATARI_DIR), str(GYM_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
