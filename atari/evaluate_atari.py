"""Evaluate a saved Atari run: by default exactly the evaluation its training ran after each
epoch (same seeds, target, episodes, step cap, dtype), so the last one is reproduced.

    python evaluate_atari.py --checkpoint runs/Breakout-reward_conditioned-gpt-s123 \
        [--eval_episodes 10 --target_return 90 --eval_envs 10 --eval_max_steps N] \
        [--json eval.json] [--video episode0.mp4|.gif] [--game Qbert]

Prints the table training prints, writes JSON (default RUN/eval.json: returns, mean ± std,
human- and gamer-normalized scores) and, with --video, the first episode as a video. A
multi-game run or model folder (--games) plays every game, or the one --game names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _paths  # noqa: F401
from decision_transformer.errors import ConfigError, DatasetError, UserError
from decision_transformer.run.distributed import DistContext
from decision_transformer.run.paths import check_output_file
from run_dt_atari import EvalRequest, evaluate_saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="run directory or its .pt, a model folder or a Hub repo id",
    )
    p.add_argument("--eval_episodes", type=int, default=None, help="default: the run's")
    p.add_argument("--target_return", type=float, default=None, help="default: the run's")
    p.add_argument("--eval_envs", type=int, default=None, help="environments played at once")
    p.add_argument("--eval_max_steps", type=int, default=None, help="default: the run's")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--json", type=Path, default=None, help="default: RUN/eval.json (none for a model folder)"
    )
    p.add_argument("--video", type=Path, default=None, help=".mp4 or .gif of episode 0")
    p.add_argument(
        "--game", default=None, help="a multi-game model: play this game only (default: all)"
    )
    args = p.parse_args(argv)
    try:
        if DistContext.described().world_size > 1:
            # Every rank would play every episode and write the same files.
            raise ConfigError("evaluate_atari.py runs in one process: start it with python, not "
                              "torchrun")  # fmt: skip
        for flag, path in (("--json", args.json), ("--video", args.video)):
            if path is not None:  # before the evaluation, not after it
                check_output_file(path, flag)
        request = EvalRequest(args.eval_episodes, args.target_return, args.eval_envs,
                              args.eval_max_steps, args.json, args.video, args.game)  # fmt: skip
        return evaluate_saved(args.checkpoint, args.device, request)
    except (ConfigError, DatasetError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
