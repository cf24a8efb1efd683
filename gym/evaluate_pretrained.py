"""Evaluate a model folder (or Hub repo id) as training evaluates; see ``--help``.

python evaluate_pretrained.py FOLDER_OR_REPO_ID [--num_eval_episodes N] [--seed S]
"""

import os
import sys

# Offscreen MuJoCo rendering on machines with no display; set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from decision_transformer.run.cli import run_cli  # noqa: E402
from decision_transformer.run.export import evaluate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(evaluate_main))
