"""Returns the model picks itself against the best hand-picked target (issue 33, measurement 3).

    python benchmarks/bench_auto_target.py --plan          # the runs and a CPU estimate
    python benchmarks/bench_auto_target.py                 # the sweep (resumable: rerun to go on)
    python benchmarks/bench_auto_target.py --table_only    # report finished runs
    python benchmarks/bench_auto_target.py --smoke         # tiny, end to end, in a few minutes

Every run trains the DT with a return head (``--return_bins``, Multi-Game DT's expert return
inference) and is evaluated after each of ``--iters`` iterations at ``--env_targets auto max
p90``: the return the model samples itself each step (tilted by ``--return_kappa``) beside the
dataset's max and 90th-percentile returns, ``--episodes`` episodes each. Per seed and model, one
single-task run per task of ``--steps`` gradient steps and one multi-task run (``--tasks``) for
the sum of those steps, with bench_multitask.py's recipe, models and default tasks (four suite
datasets of different bodies; build them first, see ``gym/data/make_suite.py``).

The table reports, per task, model and kind (single, multi), the last evaluation's return at
auto, at max and at p90: the mean over seeds and episodes ± its standard error (every episode of
every seed pooled, n = seeds x episodes). The goal: auto's mean is within one standard error
(the best fixed target's) of the best fixed target's mean, or above it. The script writes the
table as markdown and JSON and exits 1 naming every (task, model, kind) that misses it.

``--smoke`` builds tiny suite datasets in ``--out``/data (bench_multitask.py's) and runs the
whole sweep with tiny models and a few steps: the code path, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_multitask import (  # noqa: E402  (its recipe, models, data and helpers)
    EVAL_SECONDS_PER_TASK,
    GYM,
    MODELS,
    MS_PER_STEP,
    MULTI_ONLY,
    RECIPE,
    ROOT,
    TASKS,
    TINY_MODELS,
    make_smoke_data,
    sweep,
    target_keys,
    task_name,
)
from bench_multitask import train as multitask_train  # noqa: E402

TARGETS = ["auto", "max", "p90"]
FIXED = ["max", "p90"]
BINS = 60  # bins of the return head (Multi-Game DT used 120 over a wider, shared range)


@dataclass
class Result:
    """One run's last evaluation: per task and target spec, the mean and std over episodes."""

    kind: str  # single or multi
    model: str
    seed: int
    tasks: list[str]
    error: str = ""
    returns: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # -> [mean, std]


def run_dir(args, kind: str, model: str, seed: int, task: str | None = None) -> Path:
    what = task_name(task) if task else f"multi-{len(args.tasks)}tasks"
    return args.out / "runs" / f"{what}-{model}-seed{seed}"


def train(args, model: str, seed: int, out: Path, task: str | None) -> str:
    """bench_multitask.py's run, with the return head and auto among the targets."""
    head = ["--return_bins", str(args.bins), "--return_kappa", str(args.kappa)]
    return multitask_train(args, model, seed, out, task, head, TARGETS)


def read_result(result: Result, out: Path) -> None:
    """The last metrics row's mean and std at each target spec, per task (auto is its own row,
    ``target_auto``)."""
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for task in result.tasks:
        prefix = f"evaluation/{task_name(task)}/" if result.kind == "multi" else "evaluation/"
        keys = target_keys(last, prefix, TARGETS)
        result.returns[task] = {
            spec: [last[f"{key}_mean"], last[f"{key}_std"]] for spec, key in keys.items()
        }


def pooled(runs: list[list[float]], episodes: int) -> tuple[float, float] | None:
    """The mean over every episode of the runs (each ``[mean, std]`` over ``episodes``) and its
    standard error, the runs' episodes pooled: seed-to-seed spread counts as spread."""
    if not runs:
        return None
    means, stds = np.array(runs).T
    n = len(runs) * episodes
    mean = means.mean()
    var = np.mean(stds**2 + means**2) - mean**2  # population variance of all episodes
    return float(mean), float(np.sqrt(max(var, 0.0) * n / max(n - 1, 1) / n))


def fmt(x: tuple[float, float] | None) -> str:
    return f"{x[0]:.0f} ± {x[1]:.0f}" if x else "–"


def table(results: list[Result], args) -> tuple[str, list[str], list[dict]]:
    """The markdown table, the (task model kind) that miss the goal, and the rows as dicts."""
    lines = [
        "| task | model | kind | R@auto | R@max | R@p90 | best fixed | auto - best | goal |",
        "|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    missed, records = [], []
    for model in args.models:
        for task in args.tasks:
            for kind in ("single", "multi"):
                runs = [r.returns[task] for r in results
                        if r.kind == kind and r.model == model and task in r.returns]  # fmt: skip
                at = {spec: pooled([r[spec] for r in runs], args.episodes) for spec in TARGETS}
                fixed = [s for s in FIXED if at[s] is not None]
                best = max(fixed, key=lambda s: at[s][0]) if fixed else None
                met = bool(best and at["auto"]) and at["auto"][0] >= at[best][0] - at[best][1]
                gap = at["auto"][0] - at[best][0] if best and at["auto"] else None
                if not met:
                    missed.append(f"{task} {model} {kind}")
                lines.append(
                    f"| {task} | {model} | {kind} | {fmt(at['auto'])} | {fmt(at['max'])} | "
                    f"{fmt(at['p90'])} | {best or '–'} | "
                    f"{f'{gap:+.0f}' if gap is not None else '–'} | {'yes' if met else 'no'} |"
                )
                row = {"task": task, "model": model, "kind": kind, "seeds": len(runs)}
                records.append({**row, **at, "best": best, "met": met})
    return "\n".join(lines), missed, records


def plan(args) -> None:
    runs = len(args.seeds) * len(args.models) * (len(args.tasks) + 1)
    total = 0.0
    for model in args.models:
        steps = 2 * len(args.tasks) * args.steps * len(args.seeds)  # singles + the multi run
        # bench_multitask's evaluations cover 2 targets; auto adds one that costs about two
        # (the rollout runs the window twice once full attention recomputes, after K steps)
        evals = 2 * len(args.tasks) * args.iters * len(args.seeds) * (len(FIXED) + 2) / 2
        seconds = steps * MS_PER_STEP[model] / 1000 + evals * EVAL_SECONDS_PER_TASK
        total += seconds
        hours = seconds / 3600
        print(f"{model}: {steps:,} steps, {evals:.0f} task evaluations, ~{hours:.1f} CPU h")
    print(
        f"{runs} runs ({len(args.tasks)} single-task + 1 multi-task per model and seed), each "
        f"with --return_bins {args.bins}, evaluated at {' '.join(TARGETS)}; ~{total / 3600:.1f} "
        f"CPU hours in all, ~{total / 3600 / args.jobs:.1f} h with --jobs {args.jobs}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=TASKS, metavar="ENV:DATASET")
    p.add_argument("--data_dir", default=str(GYM / "data"), help="folder of the dataset files")
    # Single- and multi-task per model: not the multi-task-only 4x model of measurement 2.
    choices = [m for m in MODELS if m not in MULTI_ONLY]
    p.add_argument("--models", nargs="+", default=["qwen3"], choices=choices)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=12000, help="gradient steps per single-task run")
    p.add_argument("--iters", type=int, default=4, help="evaluations per run")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per target")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--bins", type=int, default=BINS, help="--return_bins of every run")
    p.add_argument("--kappa", type=float, default=10.0, help="--return_kappa of every run")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "auto_target"))
    p.add_argument("--plan", action="store_true", help="print runs and a CPU estimate, train none")
    p.add_argument("--table_only", action="store_true", help="report finished runs, train none")
    p.add_argument("--smoke", action="store_true", help="tiny data, models and steps: the path")
    p.add_argument("--tiny", action="store_true", help="tiny models (implied by --smoke)")
    args = p.parse_args()
    args.out = Path(args.out).resolve()
    for task in args.tasks:
        if ":" not in task:
            print(f"error: task '{task}' is not ENV:DATASET (e.g. hopper:ars-100k)",
                  file=sys.stderr)  # fmt: skip
            return 2
    if args.bins < 2 or args.episodes < 1 or args.steps < 1 or args.iters < 1:
        print("error: --bins must be >= 2 and --episodes, --steps, --iters >= 1", file=sys.stderr)
        return 2
    if args.smoke:
        args.tiny = True
        args.steps, args.iters, args.episodes, args.batch, args.bins = 10, 2, 2, 8, 8
        args.tasks = [f"{t.split(':', 1)[0]}:ars-300" for t in args.tasks]
        args.data_dir = str(args.out / "data")
        if not args.plan:
            make_smoke_data(Path(args.data_dir), args.tasks)
    args.data_dir = str(Path(args.data_dir).resolve())
    if args.plan:
        plan(args)
        return 0
    start = time.time()
    results = sweep(args, Result, run_dir, train, read_result)
    if results is None:
        return 2
    text, missed, records = table(results, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auto_target.md").write_text(text + "\n")
    record = {
        "command": " ".join(sys.argv),
        "tasks": args.tasks,
        "steps_per_single_task_run": args.steps,
        "iters": args.iters,
        "episodes": args.episodes,
        "seeds": args.seeds,
        "return_bins": args.bins,
        "return_kappa": args.kappa,
        "recipe": RECIPE,
        "models": {m: (TINY_MODELS[m] if args.tiny else MODELS[m][1]) for m in args.models},
        "wall_seconds": time.time() - start,
        "rows": records,
        "runs": [r.__dict__ for r in results],
        "missed": missed,
    }
    (args.out / "auto_target.json").write_text(json.dumps(record, indent=2) + "\n")
    errors = [r for r in results if r.error]
    if errors:
        print(f"{len(errors)} runs failed or are missing: rerun to continue", file=sys.stderr)
    if missed:
        print(f"missed: auto below the best fixed target by more than one standard error on "
              f"{'; '.join(missed)}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
