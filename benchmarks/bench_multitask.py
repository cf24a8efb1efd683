"""One DT over several bodies against one DT per body (issue 33, measurements 1, 2 and 4).

    python benchmarks/bench_multitask.py --plan          # the runs and a CPU estimate
    python benchmarks/bench_multitask.py                 # the sweep (resumable: rerun to go on)
    python benchmarks/bench_multitask.py --table_only    # report finished runs
    python benchmarks/bench_multitask.py --smoke         # tiny, end to end, in a few minutes
    python benchmarks/bench_multitask.py --step_time     # ms per step: per-task vs padded

For each seed and model (the Qwen3 DT; the GPT-2 DT beside it, measurement 4), one single-task
run per task of ``--steps`` gradient steps, and one multi-task run (``--tasks``) of the same
model size for the sum of those steps (``--steps`` x tasks; ``--task_sampling uniform``, so
each task gets about ``--steps`` batches' worth of rows). Every run is evaluated after each of
``--iters`` iterations at the dataset's max and 90th-percentile return (``--env_targets max
p90``, resolved per task), ``--episodes`` episodes each. The table reports, per task and model,
the last evaluation's return at max (mean ± std over seeds) of the single-task and of the
multi-task runs and their ratio; the goal (measurement 1, for the Qwen3 DT): the multi-task
return is at least 90% of the single-task one on every task, in the mean over seeds (below a
negative single-task return by at most a tenth of its size). The script writes the table as
markdown and JSON and exits 1 naming every task that misses it.

Measurement 2, model ``qwen3-4x``: the same multi-task run (same steps, data and recipe) with a
backbone of 4x the parameters (2.91M against 0.72M: twice the width, 256, at the same depth,
head size 32 and query/KV-head ratio, SwiGLU ratio 3.5), multi-task only. A second table says
per task whether it beats the small multi-task model and the single-task models (mean over
seeds): reported, not a goal, so it does not change the exit status.

The default tasks are four suite datasets of different bodies (build them first, see
``gym/data/make_suite.py``): hopper:ars-100k walker2d:ars-100k halfcheetah:ars-100k
humanoid:ars-100k. Not Ant: the suite's ant-ars recipe does not learn (benchmarks/README.md),
its returns are all near zero, so it would test nothing about return conditioning. A finished
run is read, not retrained; an interrupted one resumes (--resume).

``--smoke`` builds tiny suite datasets (a 2-iteration ARS policy, 300 steps per body) in
``--out``/data and runs the whole sweep with tiny models and a few steps: the code path, not a
measurement. ``--step_time`` times a training step (forward, backward, AdamW) of the Qwen3 DT in
CPU time on one thread (the median; CPU time, so other processes on a shared machine do not
count): one task's batch, a batch mixing the four bodies through per-task embeddings and heads
(what ``--tasks`` trains), and the same batch through one shared embedding and head of the
largest sizes, zero-padded (JAT's choice), with each variant's parameter count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GYM = ROOT / "gym"
sys.path.insert(0, str(GYM))

TASKS = ["hopper:ars-100k", "walker2d:ars-100k", "halfcheetah:ars-100k", "humanoid:ars-100k"]
# --step_time's bodies (its table in benchmarks/README.md was measured on these four).
STEP_TIME_TASKS = ["hopper:ars-100k", "walker2d:ars-100k", "halfcheetah:ars-100k", "ant:ars-100k"]
BATCH = 64
TARGETS = ["max", "p90"]
GOAL = 0.9  # multi-task return / single-task return, every task, mean over seeds
TARGET_MODEL = "qwen3"  # the goal is the Qwen3 DT's; the GPT-2 DT is reported beside it
# The recipe that met its targets on the Hopper ARS data (docs/reference.md, bench_recipes.py).
RECIPE = ["-lr", "1e-3", "--warmup_steps", "200", "--lr_decay", "cosine", "--K", "5"]
MODELS = {
    "qwen3": (
        "experiment_qwen.py",
        ["--embed_dim", "128", "--n_layer", "3", "--n_head", "4", "--n_kv_head", "2"]
        + ["--mlp_ratio", "3.0"],
    ),
    "gpt2": ("experiment.py", ["--embed_dim", "128", "--n_layer", "3", "--n_head", "4"]),
    # Measurement 2: 4.05x the Qwen3 DT's backbone parameters (2,913,216 against 719,424).
    "qwen3-4x": (
        "experiment_qwen.py",
        ["--embed_dim", "256", "--n_layer", "3", "--n_head", "8", "--n_kv_head", "4"]
        + ["--mlp_ratio", "3.5"],
    ),
}
MULTI_ONLY = {"qwen3-4x"}  # measured as a multi-task run only, against qwen3's runs
LARGER = ("qwen3-4x", "qwen3")  # measurement 2: the larger model and the one it is compared to
TINY_MODELS = {
    "qwen3": ["--embed_dim", "32", "--n_layer", "1", "--n_head", "2", "--n_kv_head", "1"],
    "gpt2": ["--embed_dim", "32", "--n_layer", "1", "--n_head", "1"],
    "qwen3-4x": ["--embed_dim", "64", "--n_layer", "1", "--n_head", "4", "--n_kv_head", "2"],
}
# For --plan: milliseconds per step of batch 64 at K 5 on this project's 2-core CPU
# (benchmarks/README.md, bench_humanoid_quality.py); a mixed batch costs about the same (see
# --step_time). Seconds per evaluation of one task (2 targets x 10 episodes, batched, up to
# 1000 steps each), a rough figure from the recipe sweep's 60 s for 3 targets x 20 episodes.
MS_PER_STEP = {"qwen3": 56, "gpt2": 50, "qwen3-4x": 320}  # 4x: its first 12,000 steps, 3,851 s
EVAL_SECONDS_PER_TASK = 30


@dataclass
class Result:
    """One run's last evaluation: return at each target spec, per task."""

    kind: str  # single or multi
    model: str
    seed: int
    tasks: list[str]
    error: str = ""
    returns: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> spec -> return


def task_name(task: str) -> str:
    from decision_transformer.run.config import task_name as name

    return name(task)


def run_dir(args, kind: str, model: str, seed: int, task: str | None = None) -> Path:
    what = task_name(task) if task else f"multi-{len(args.tasks)}tasks"
    return args.out / "runs" / f"{what}-{model}-seed{seed}"


def finished(out: Path, iters: int) -> bool:
    rows = out / "metrics.jsonl"
    return rows.is_file() and len(rows.read_text().splitlines()) >= iters


def train(
    args, model: str, seed: int, out: Path, task: str | None, extra=(), targets=TARGETS
) -> str:
    """One run through the real script (resumed if it was interrupted); '' or its error.
    ``extra``: more flags (bench_auto_target.py's return head), ``targets`` its --env_targets."""
    script, flags = MODELS[model]
    flags = TINY_MODELS[model] if args.tiny else flags
    steps = args.steps * (1 if task else len(args.tasks))
    which = ["--env", *task.split(":", 1)] if task else ["--tasks", *args.tasks]
    if task:
        which.insert(2, "--dataset")
    cmd = [
        sys.executable, script, *which, "--data_dir", args.data_dir, *flags, *RECIPE, *extra,
        "--batch_size", str(args.batch), "--max_iters", str(args.iters),
        "--num_steps_per_iter", str(max(1, steps // args.iters)),
        "--num_eval_episodes", str(args.episodes), "--eval_envs", str(args.episodes),
        "--env_targets", *targets, "--seed", str(seed), "--out_dir", str(out), "--export", "false",
        *(["--resume"] if (out / "checkpoint.pt").is_file() else []),
    ]  # fmt: skip
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.jobs))
    proc = subprocess.run(
        cmd, cwd=GYM, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads}
    )
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return ""


def target_keys(row: dict, prefix: str, specs: list[str]) -> dict[str, str]:
    """Each target spec's metric stem (``{prefix}target_{t}_return``) in a metrics row, read off
    the row itself, so that a run folder kept without its weights (a measurement committed to
    carry it to another machine, benchmarks/README.md) is still read. The fixed specs are
    ``max`` and ``p90`` in that order, resolved to numbers with max >= p90: the row's numeric
    targets, largest first (one number when the two coincide); ``auto`` keeps its name."""
    head, tail = f"{prefix}target_", "_return_mean"
    found = [k[len(head) : -len(tail)] for k in row if k.startswith(head) and k.endswith(tail)]
    numbers = sorted((t for t in found if t != "auto"), key=float, reverse=True)
    fixed = [s for s in specs if s != "auto"]
    if not numbers or len(numbers) > len(fixed) or ("auto" in specs) != ("auto" in found):
        raise ValueError(f"metrics row has targets {found}, expected the specs {specs}")
    resolved = {s: numbers[min(i, len(numbers) - 1)] for i, s in enumerate(fixed)}
    return {s: f"{head}{resolved.get(s, s)}_return" for s in specs}


def read_result(result: Result, out: Path) -> None:
    """The last metrics row's return at each target spec, per task."""
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for task in result.tasks:
        prefix = f"evaluation/{task_name(task)}/" if result.kind == "multi" else "evaluation/"
        keys = target_keys(last, prefix, TARGETS)
        result.returns[task] = {spec: last[f"{key}_mean"] for spec, key in keys.items()}


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.0f} ± {np.std(values):.0f}" if values else "–"


def returns_at(results: list[Result], kind: str, model: str, task: str, spec: str) -> list[float]:
    """One value per seed: the runs of ``kind`` and ``model`` that evaluated ``task``."""
    return [
        r.returns[task][spec] for r in results if r.kind == kind and r.model == model
        and task in r.returns and (kind == "multi" or r.tasks == [task])
    ]  # fmt: skip


def table(results: list[Result], args) -> tuple[str, list[str]]:
    """The markdown table and the tasks missing the goal (Qwen3 DT)."""
    lines = [
        "| task | model | single-task R@max | multi-task R@max | ratio | single R@p90 "
        "| multi R@p90 | goal (>= 90%) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    missed = []
    for model in [m for m in args.models if m not in MULTI_ONLY]:
        for task in args.tasks:
            s_max, m_max = (returns_at(results, k, model, task, "max") for k in ("single", "multi"))
            both = bool(s_max and m_max)
            s, m = (np.mean(s_max), np.mean(m_max)) if both else (0.0, 0.0)
            # At least 90% of the single-task return; for a negative one, at most 10% below it.
            met = both and m >= s - (1 - GOAL) * abs(s)
            ratio = m / s if both and s > 0 else None
            if model == TARGET_MODEL and not met:
                missed.append(task)
            lines.append(
                f"| {task} | {model} | {mean_std(s_max)} | {mean_std(m_max)} | "
                f"{f'{ratio:.2f}' if ratio is not None else '–'} | "
                f"{mean_std(returns_at(results, 'single', model, task, 'p90'))} | "
                f"{mean_std(returns_at(results, 'multi', model, task, 'p90'))} "
                f"| {'yes' if met else 'no'} |"
            )
    return "\n".join(lines), missed


def beats(values: list[float], other: list[float]) -> str:
    """'yes' when the mean of ``values`` is above the mean of ``other``; '–' when one is missing."""
    if not (values and other):
        return "–"
    return "yes" if np.mean(values) > np.mean(other) else "no"


def larger_table(results: list[Result], args) -> tuple[str, list[dict]]:
    """Measurement 2: per task, the 4x multi-task model's R@max against the small model's
    multi-task and single-task runs (means over seeds), reported, not a goal."""
    big, small = LARGER
    if big not in args.models:
        return "", []
    lines = [
        f"| task | single-task {small} R@max | multi-task {small} R@max | multi-task {big} R@max "
        f"| {big} > multi {small}? | {big} > single {small}? |",
        "|---|---:|---:|---:|---|---|",
    ]
    records = []
    for task in args.tasks:
        single, multi, large = (
            returns_at(results, kind, model, task, "max")
            for kind, model in (("single", small), ("multi", small), ("multi", big))
        )

        row = {
            "task": task,
            "beats_multi": beats(large, multi),
            "beats_single": beats(large, single),
        }
        records.append({**row, "single": single, "multi": multi, "large": large})
        lines.append(
            f"| {task} | {mean_std(single)} | {mean_std(multi)} | {mean_std(large)} | "
            f"{row['beats_multi']} | {row['beats_single']} |"
        )
    return "\n".join(lines), records


def plan(args) -> None:
    runs, total = 0, 0.0
    for model in args.models:
        kinds = 1 if model in MULTI_ONLY else 2  # the multi run (its steps: the singles' sum)
        runs += len(args.seeds) * (1 if model in MULTI_ONLY else len(args.tasks) + 1)
        steps = kinds * len(args.tasks) * args.steps * len(args.seeds)
        evals = kinds * len(args.tasks) * args.iters * len(args.seeds)
        seconds = steps * MS_PER_STEP[model] / 1000 + evals * EVAL_SECONDS_PER_TASK
        total += seconds
        print(f"{model}: {steps:,} steps and {evals} task evaluations, ~{seconds / 3600:.1f} CPU h")
    print(
        f"{runs} runs ({len(args.tasks)} single-task + 1 multi-task per model and seed"
        f"{''.join(f', {m} multi-task only' for m in args.models if m in MULTI_ONLY)}); "
        f"~{total / 3600:.1f} CPU hours in all, ~{total / 3600 / args.jobs:.1f} h with "
        f"--jobs {args.jobs} (at one core per run)"
    )


def make_smoke_data(data_dir: Path, tasks: list[str]) -> None:
    """Tiny suite datasets from the real simulator: a 2-iteration ARS policy per body."""
    from decision_transformer.data import suite

    for task in tasks:
        env, name = task.split(":", 1)
        recipe = suite.recipe_for(f"{env}-{name}")
        ars = replace(recipe.policy.ars, iterations=2, directions=2, top=1, horizon=50)
        recipe = replace(recipe, policy=replace(recipe.policy, ars=ars))
        suite.build(recipe, data_dir, log=lambda _: None)


def step_time(args) -> None:
    """ms per training step: one task; four bodies through per-task parts; the same padded."""
    import torch
    from decision_transformer.models.factory import ModelConfig, build_multitask_model
    from decision_transformer.run.config import task_shapes

    torch.set_num_threads(1)
    shapes = task_shapes(STEP_TIME_TASKS)
    cfg = ModelConfig("dt", "qwen3", 128, 3, 4, 5, 0.1, n_kv_head=2, mlp_ratio=3.0)
    S, A = max(s.state_dim for s in shapes), max(s.act_dim for s in shapes)
    padded_shape = replace(shapes[0], state_dim=S, act_dim=A, action_low=-1.0, action_high=1.0)
    g = torch.Generator().manual_seed(0)
    K, B = 5, args.batch
    per_task = B // len(shapes)

    def batch(dims):
        states = torch.zeros(B, K, S)
        actions = torch.zeros(B, K, A)
        row = 0
        for sd, ad, n in dims:
            states[row : row + n, :, :sd] = torch.randn(n, K, sd, generator=g)
            actions[row : row + n, :, :ad] = torch.rand(n, K, ad, generator=g) * 2 - 1
            row += n
        rtg = torch.rand(B, K, 1, generator=g)
        t = torch.randint(0, 1000, (B, K), generator=g)
        return states, actions, rtg, t

    variants = {
        "one task (hopper)": (
            [shapes[0]],
            [(shapes[0].state_dim, shapes[0].act_dim, B)],
            ((0, B),),
        ),
        "4 bodies, per-task parts": (
            shapes,
            [(s.state_dim, s.act_dim, per_task) for s in shapes],
            tuple((i, per_task) for i in range(len(shapes))),
        ),
        "4 bodies, shared padded": (
            [padded_shape],
            [(s.state_dim, s.act_dim, per_task) for s in shapes],
            ((0, B),),
        ),
    }
    for name, (model_shapes, dims, groups) in variants.items():
        torch.manual_seed(0)
        model = build_multitask_model(cfg, model_shapes)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        states, actions, rtg, t = batch(dims)
        times = []
        for i in range(args.repeats + 5):
            start = time.process_time()  # CPU time: the machine is shared, wall time is not ours
            _, preds, _ = model(states, actions, None, rtg, t, None, groups)
            loss = (preds - actions[..., : preds.shape[-1]]).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 5:  # warm-up steps aside
                times.append(time.process_time() - start)
        params = sum(p.numel() for p in model.parameters())
        own = sum(p.numel() for p in model.tasks.parameters())
        print(
            f"{name:26s} {1000 * np.median(times):6.1f} CPU ms/step (median of {args.repeats}, "
            f"batch {B}, K {K}); {params:,} parameters, {own:,} of them per-body parts"
        )


def sweep(args, result_type, run_dir, train, read_result) -> list | None:
    """Every run of the sweep (per model and seed: each task alone, then all tasks at once),
    trained unless finished or --table_only, then read; None after one line on stderr when a
    task's data is missing. bench_auto_target.py shares it: the scripts differ in how a run is
    trained and read, not in this loop."""
    from decision_transformer.data.loading import check_dataset_available
    from decision_transformer.errors import UserError

    for task in args.tasks:
        try:
            check_dataset_available(args.data_dir, *task.split(":", 1))
        except UserError as e:  # before any training: which file, and how to make it
            print(f"error: {task}: {e}", file=sys.stderr)
            return None

    lock = threading.Lock()

    def one(kind: str, model: str, seed: int, task: str | None) -> Result:
        tasks = [task] if task else list(args.tasks)
        result = result_type(kind, model, seed, tasks)
        out = run_dir(args, kind, model, seed, task)
        if not finished(out, args.iters) and not args.table_only:
            result.error = train(args, model, seed, out, task)
        if not result.error and finished(out, args.iters):
            read_result(result, out)
        elif not result.error:
            result.error = "not run"
        with lock:
            what = task or f"{len(tasks)} tasks"
            print(f"{kind} {what} {model} seed {seed}: {result.error or 'done'}", flush=True)
        return result

    todo = [
        (kind, model, seed, task)
        for model in args.models
        for seed in args.seeds
        for kind, task in [("single", t) for t in args.tasks] + [("multi", None)]
        if kind == "multi" or model not in MULTI_ONLY
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(lambda t: one(*t), todo))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=TASKS, metavar="ENV:DATASET")
    p.add_argument("--data_dir", default=str(GYM / "data"), help="folder of the dataset files")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=12000, help="gradient steps per single-task run")
    p.add_argument("--iters", type=int, default=4, help="evaluations per run")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per target")
    p.add_argument("--batch", type=int, default=BATCH, help="batch size")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "multitask"))
    p.add_argument("--plan", action="store_true", help="print runs and a CPU estimate, train none")
    p.add_argument("--table_only", action="store_true", help="report finished runs, train none")
    p.add_argument("--smoke", action="store_true", help="tiny data, models and steps: the path")
    p.add_argument("--tiny", action="store_true", help="tiny models (implied by --smoke)")
    p.add_argument("--step_time", action="store_true", help="time per-task vs padded, then exit")
    p.add_argument("--repeats", type=int, default=20, help="--step_time: timed steps")
    args = p.parse_args()
    args.out = Path(args.out).resolve()
    if args.step_time:
        step_time(args)
        return 0
    for task in args.tasks:
        if ":" not in task:
            print(
                f"error: task '{task}' is not ENV:DATASET (e.g. hopper:ars-100k)", file=sys.stderr
            )
            return 2
    if args.smoke:
        args.tiny = True
        args.steps, args.iters, args.episodes, args.batch = 10, 2, 2, 8
        args.tasks = [f"{t.split(':', 1)[0]}:ars-300" for t in args.tasks]
        args.seeds = args.seeds[:2]
        args.data_dir = str(args.out / "data")
        make_smoke_data(Path(args.data_dir), args.tasks)
    args.data_dir = str(Path(args.data_dir).resolve())
    if args.plan:
        plan(args)
        return 0
    start = time.time()
    results = sweep(args, Result, run_dir, train, read_result)
    if results is None:
        return 2
    text, missed = table(results, args)
    larger, larger_records = larger_table(results, args)
    text += f"\n\nMeasurement 2 (reported, not a goal):\n\n{larger}" if larger else ""
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multitask.md").write_text(text + "\n")
    record = {
        "command": " ".join(sys.argv),
        "tasks": args.tasks,
        "steps_per_single_task_run": args.steps,
        "iters": args.iters,
        "episodes": args.episodes,
        "seeds": args.seeds,
        "recipe": RECIPE,
        "models": {m: (TINY_MODELS[m] if args.tiny else MODELS[m][1]) for m in args.models},
        "wall_seconds": time.time() - start,
        "runs": [r.__dict__ for r in results],
        "missed": missed,
        "larger": larger_records,
    }
    (args.out / "multitask.json").write_text(json.dumps(record, indent=2) + "\n")
    errors = [r for r in results if r.error]
    if errors:
        print(f"{len(errors)} runs failed or are missing: rerun to continue", file=sys.stderr)
    if missed:
        print(
            f"missed: multi-task {TARGET_MODEL} return below {GOAL:.0%} of single-task on "
            f"{', '.join(missed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
