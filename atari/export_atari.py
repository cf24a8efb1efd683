"""Export an Atari run (run_dt_atari.py's --out_dir) as a model folder: config.json,
model.safetensors and a README.md model card with the folder's measured evaluation.

    python export_atari.py runs/Breakout-reward_conditioned-gpt-s123 --out models/breakout-dt \
        [--eval_episodes N] [--eval_envs E]

A multi-game run (run_dt_atari.py --games) gives one folder of every game: its card has a row
per game and the mean normalized scores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _paths  # noqa: F401
from decision_transformer.run.cli import OneLineParser, run_cli
from pretrained_atari import export_atari_run


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__)
    p.add_argument("run", type=Path, help="a run folder run_dt_atari.py wrote")
    p.add_argument("--out", required=True, type=Path, help="the model folder to write (new)")
    p.add_argument(
        "--eval_episodes",
        type=int,
        default=None,
        help="episodes for the card (default: the run's; 0: none)",
    )
    p.add_argument("--eval_envs", type=int, default=None, help="default: the run's")
    args = p.parse_args(argv)

    def export() -> int:
        out = export_atari_run(args.run, args.out, args.eval_episodes, args.eval_envs)
        print(f"wrote {out}")
        return 0

    return run_cli(export)


if __name__ == "__main__":
    sys.exit(main())
