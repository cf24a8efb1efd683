"""experiment.py and experiment_qwen.py: flags -> one resolved RunConfig -> one Run.

    main(argv)  parse the flags (run/config.py), resolve them into the final RunConfig, run it
    run(cfg)    Run(cfg).execute() (run/run.py), its exit code

User errors anywhere on the way are one line on stderr and exit code 2 (run/cli.py).
"""

from __future__ import annotations

import gc
import sys

from .cli import run_cli
from .config import RunConfig, build_parser, resolve
from .multitask_run import MultiTaskRun
from .run import Run


def main(argv: list[str] | None = None, backbone: str = "gpt2") -> int:
    parser = build_parser(qwen=backbone == "qwen3")
    args = parser.parse_args(argv)
    # Logs redirected to a file (SLURM, nohup) should show each iteration as it ends.
    sys.stdout.reconfigure(line_buffering=True)
    return run_cli(lambda: run(resolve(args, backbone)))


def run(cfg: RunConfig) -> int:
    """One run (training, evaluation, checkpoints); its exit code."""
    code = (MultiTaskRun(cfg) if cfg.tasks else Run(cfg)).execute()
    # FSDP2's hooks put the run's model in reference cycles that outlive the Run and hold the
    # process group: collected here, the group is freed while the interpreter is whole (see
    # DistContext.from_env for why that matters).
    gc.collect()
    return code
