"""Evaluate a checkpoint the way its training run did, and optionally render an episode.

    python evaluate.py --checkpoint runs/RUN/checkpoint.pt [--num_eval_episodes N]
        [--target_return R ...] [--eval_envs E] [--seed S] [--video out.mp4] [--json out.json]

Prints returns, lengths and normalized scores per target as a markdown table and writes them
to RUN/eval.json; ``--help`` lists every flag.
"""

import os
import sys

# Offscreen MuJoCo rendering on machines with no display; set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from decision_transformer.run.evaluate_checkpoint import main  # noqa: E402

if __name__ == "__main__":
    # A model folder (export.py) or Hub repo id goes to evaluate_pretrained.py's evaluation.
    from decision_transformer.run.export import evaluate_main, evaluate_py_argv

    folder_argv = evaluate_py_argv(sys.argv[1:])
    sys.exit(main() if folder_argv is None else evaluate_main(folder_argv))
