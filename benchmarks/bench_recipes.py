"""Which training recipe holds across datasets? A sweep of datasets x recipes x models x seeds.

    python benchmarks/bench_recipes.py humanoid:collected humanoid:pd-20k hopper:linear-100k
    python benchmarks/bench_recipes.py humanoid:collected --recipes original readme --seeds 0
    python benchmarks/bench_recipes.py humanoid:collected --plan        # runs and CPU estimate
    python benchmarks/bench_recipes.py humanoid:collected --table_only  # report finished runs
    python benchmarks/bench_recipes.py humanoid:collected --table_only --curves figs  # plot them

Each DATASET is ENV:NAME, the file {data_dir}/{ENV}-{NAME}-v2.pkl (or ENV:minari:<id>); the
script builds no data (gym/data/make_suite.py builds the suite's, e.g. humanoid-mixed-20k). Every
run goes through the real experiment scripts with validation on (--val_episodes, default 10% of
the episodes, held out by the seed) and best.pt chosen by the recipe's --select_by: the
validation error, or for the -ret recipes the return at the top target (return@max); it is
evaluated after each of --iters iterations on --episodes episodes per target, conditioned on the
dataset's best return, median and 10th percentile. The table reports, per dataset, recipe, model
and seed, the returns at the iteration best.pt keeps (R@max, R@p50, R@p10; the same numbers
evaluate.py --which best reproduces), the last iteration's R@max, the dataset's 90th percentile,
the validation error at that iteration, and the two checks of the issue-23 target: R@max >= p90,
and returns rising with the target (R@max > R@p50 > R@p10). A return-selected run is reported by
a fresh evaluation of best.pt (evaluate.py, --episodes episodes per target from resets the run
never played, saved as RUN/eval-best-fresh.json): its in-run returns chose the iteration, so
they flatter it; they are kept in the "in-run R@max" column. Recipes that differ only in
--select_by train the same weights, so when both are asked for (readme and readme-ret) only the
return-selected one trains, and the other's row is read from its run.

Every recipe is compared with the original's defaults on the same dataset and model: the summary's
last column is the difference of the mean R@max over seeds ± its standard error (seed stds, ddof
1), and the script names the datasets where a recipe is worse by more than two standard errors
(issue 34's bar for the README's advice: never worse than the original's defaults).

The budget: every run is at most --steps gradient steps of batch 64 (a recipe whose steps scale
with the dataset takes fewer on small data), plus evaluation. The target, for the Qwen3 DT: some
recipe meets both checks on every dataset, in the mean over seeds. The script prints the table
(first the mean ± std over seeds per dataset, recipe and model, then every seed), writes it as
markdown and JSON (--out_md, --out_json), with --curves DIR draws each dataset's learning curves
per DT backbone (plot.py's figure: returns per target, training and validation error, one line
per recipe and seed), and exits 1 naming the missed target.

A run already finished is read, not retrained; one interrupted is resumed (--resume), so a long
sweep can be stopped and restarted with the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GYM = ROOT / "gym"
sys.path.insert(0, str(GYM))

from decision_transformer.data import suite  # noqa: E402
from decision_transformer.data.loading import load_dataset  # noqa: E402

BATCH = 64
TARGETS = ["max", "p50", "p10"]


@dataclass
class Recipe:
    """Training flags, and the steps: the budget, or ``epochs`` passes over the dataset's steps
    (steps x batch windows = epochs x dataset steps), capped by the budget. ``select_by`` is the
    run's ``--select_by``: which iteration best.pt keeps and the table reports."""

    flags: list[str]
    epochs: float | None = None
    why: str = ""
    select_by: str = "val_error"

    @property
    def by_return(self) -> bool:
        return self.select_by.startswith("return@")

    def steps(self, budget: int, data_steps: int) -> int:
        if self.epochs is None:
            return budget
        return max(1, min(budget, round(self.epochs * data_steps / BATCH)))


RECIPES = {
    "original": Recipe(
        ["-lr", "1e-4", "--warmup_steps", "10000", "--lr_decay", "none", "--K", "20"],
        why="the original DT's defaults",
    ),
    "readme": Recipe(
        ["-lr", "1e-3", "--warmup_steps", "200", "--lr_decay", "cosine", "--K", "5"],
        why="the README's recipe, tuned on the embedded Humanoid dataset",
    ),
    "readme-ret": Recipe(
        ["-lr", "1e-3", "--warmup_steps", "200", "--lr_decay", "cosine", "--K", "5"],
        why="the README's recipe, best.pt by the return at the top target (issue 34)",
        select_by="return@max",
    ),
    "readme-K20": Recipe(
        ["-lr", "1e-3", "--warmup_steps", "200", "--lr_decay", "cosine", "--K", "20"],
        why="the README's recipe at the original's K (issue 23's failing case)",
    ),
    "lr3e-4": Recipe(
        ["-lr", "3e-4", "--warmup_steps", "1000", "--lr_decay", "cosine", "--K", "20"],
        why="a middle rate, longer warmup",
    ),
    "lr1e-3-reg": Recipe(
        ["-lr", "1e-3", "--warmup_steps", "200", "--lr_decay", "cosine", "--K", "20"]
        + ["--dropout", "0.2", "-wd", "0.1"],
        why="the README's rate with more dropout and weight decay",
    ),
    "lr1e-4-K5": Recipe(
        ["-lr", "1e-4", "--warmup_steps", "500", "--lr_decay", "cosine", "--K", "5"],
        why="the original's rate, warmed up within the budget, at the README's K",
    ),
    "lr3e-4-K5-epochs": Recipe(
        ["-lr", "3e-4", "--warmup_steps", "500", "--lr_decay", "cosine", "--K", "5"],
        epochs=30,
        why="steps scaled to the data: 30 passes, at most the budget",
    ),
}
# ~0.6-0.8M parameters each, as in bench_humanoid_quality.py; BC is an MLP on the current state.
MODELS = {
    "qwen3": (
        "experiment_qwen.py",
        ["--embed_dim", "128", "--n_layer", "3", "--n_head", "4", "--n_kv_head", "2"]
        + ["--mlp_ratio", "3.0"],
    ),
    "gpt2": ("experiment.py", ["--embed_dim", "128", "--n_layer", "3", "--n_head", "4"]),
    "bc": ("experiment.py", ["--model_type", "bc", "--embed_dim", "256", "--n_layer", "3"]),
}
# --tiny (smoke runs): the same code paths at a fraction of the cost.
TINY_MODELS = {
    "qwen3": ["--embed_dim", "32", "--n_layer", "1", "--n_head", "2", "--n_kv_head", "1"],
    "gpt2": ["--embed_dim", "32", "--n_layer", "1", "--n_head", "1"],
    "bc": ["--model_type", "bc", "--embed_dim", "32", "--n_layer", "1"],
}
TARGET_MODEL = "qwen3"  # the model the target is set for (a miss makes the script exit 1)
# Milliseconds per training step (batch 64) on this project's 2-core CPU, for --plan's estimate:
# Qwen3/GPT-2 at K 5 from benchmarks/README.md (bench_humanoid_quality.py); K 20 from those times
# x 2.1, the K20/K5 step-time ratio probed here (40 steps each, on a loaded machine); BC from
# its 229,023 steps in 13.9 minutes there.
MS_PER_STEP = {("qwen3", 5): 56, ("gpt2", 5): 50, ("qwen3", 20): 120, ("gpt2", 20): 105}
MS_PER_STEP_BC = 3.6
# Seconds to evaluate one iteration (3 targets x 20 episodes, batched) on Humanoid, for --plan.
EVAL_SECONDS = 60
# A run that keeps best.pt by its return is reported by a fresh evaluation of best.pt on other
# resets: the in-run returns chose the iteration, so they flatter it (a maximum over noisy means).
# The fresh episodes start from env seeds (seed + FRESH_SEED_OFFSET) * 100000 + i.
FRESH_SEED_OFFSET = 1000
FRESH_JSON = "eval-best-fresh.json"


@dataclass
class Row:
    dataset: str
    recipe: str
    model: str
    seed: int
    steps: int
    p90: float
    ok: bool = True
    best_iteration: int | None = None
    returns: list[float] = field(default_factory=list)  # at max, p50, p10, at best.pt's iteration
    # Return-selected runs: the in-run returns at the chosen iteration (``returns`` then holds
    # the fresh evaluation of best.pt, see FRESH_SEED_OFFSET).
    selected_returns: list[float] = field(default_factory=list)
    last_max: float | None = None
    val_error: float | None = None
    minutes: float | None = None
    error: str = ""

    @property
    def meets_p90(self) -> bool | None:
        return self.returns[0] >= self.p90 if self.returns else None

    @property
    def rising(self) -> bool | None:
        if not self.returns or self.model == "bc":  # BC does not see the target
            return None
        return self.returns[0] > self.returns[1] > self.returns[2]


def parse_dataset(name: str) -> tuple[str, str] | None:
    env, sep, dataset = name.partition(":")
    return (env, dataset) if sep and env and dataset else None


def model_flags(model: str, recipe: Recipe, tiny: bool) -> list[str]:
    flags = [*recipe.flags, *(TINY_MODELS[model] if tiny else MODELS[model][1])]
    return flags + ["--K", "1"] if model == "bc" else flags  # BC's K comes last and wins


def run_dir(args: argparse.Namespace, dataset: str, recipe: str, model: str, seed: int) -> Path:
    safe = dataset.replace(":", "-").replace("/", "-")
    return args.out / safe / recipe / f"{model}-seed{seed}"


def shared_training(requested: list[str]) -> dict[str, str]:
    """Recipes read from another requested recipe's run instead of training their own: a
    val_error recipe whose training (flags and steps) equals a return-selected one's. Selection
    changes which weights best.pt keeps, never what is trained, so the val_error row is that
    run's in-run returns at its lowest validation error, the numbers its own run would give."""
    reads = {}
    for name in requested:
        mine = RECIPES[name]
        if mine.by_return:
            continue
        for other in requested:
            theirs = RECIPES[other]
            if theirs.by_return and (theirs.flags, theirs.epochs) == (mine.flags, mine.epochs):
                reads[name] = other
                break
    return reads


def finished(out: Path, iters: int) -> bool:
    rows = out / "metrics.jsonl"
    return rows.is_file() and len(rows.read_text().splitlines()) >= iters


def train(args, env: str, dataset: str, recipe: Recipe, model: str, seed: int, steps: int, out):
    script = MODELS[model][0]
    per_iter = max(1, steps // args.iters)
    cmd = [
        sys.executable, script, "--env", env, "--dataset", dataset, "--data_dir", args.data_dir,
        *model_flags(model, recipe, args.tiny), "--batch_size", str(BATCH),
        "--max_iters", str(args.iters), "--num_steps_per_iter", str(per_iter),
        "--val_episodes", str(args.val_episodes), "--select_by", recipe.select_by,
        "--num_eval_episodes", str(args.episodes), "--eval_envs", str(args.episodes),
        "--env_targets", *TARGETS, "--seed", str(seed), "--out_dir", str(out),
        *(["--resume"] if (out / "checkpoint.pt").is_file() else []),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=GYM, capture_output=True, text=True, env=run_env(args))
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return ""


def run_env(args) -> dict[str, str]:
    # One thread per run, --jobs runs at once: the models are small, and a second thread on a
    # busy core spins at its barriers (several times the CPU for the same steps). A user's
    # OMP_NUM_THREADS wins (e.g. 1 while another benchmark shares the machine).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads}


def read_metrics(out: Path) -> tuple[list[dict], list[str]]:
    """A run's metrics.jsonl rows and its return keys, highest target first."""
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = sorted(
        (k for k in metrics[0] if k.startswith("evaluation/") and k.endswith("_return_mean")),
        key=lambda k: -float(k.split("target_")[1].split("_")[0]),
    )
    return metrics, keys


def best_index(metrics: list[dict], keys: list[str], recipe: Recipe) -> int:
    """The iteration (0-based) best.pt keeps: lowest validation error, or with return selection
    the highest return at the top target; ties keep the first, as run/selection.py does."""
    if recipe.by_return:
        values = [-m[keys[0]] for m in metrics]
    else:
        values = [m["validation/action_error"] for m in metrics]
    return values.index(min(values))


def fresh_returns(out: Path, iteration: int) -> list[float] | None:
    """The fresh evaluation of best.pt (highest target first), if it evaluated that iteration."""
    try:
        report = json.loads((out / FRESH_JSON).read_text())
    except (OSError, ValueError):
        return None
    if report.get("iteration") != iteration:
        return None  # best.pt changed since (the run went on): evaluate again
    targets = sorted(report["targets"], key=lambda t: -t["target"])
    return [t["return_mean"] for t in targets]


def evaluate_fresh(args, out: Path, seed: int) -> str:
    """Evaluate best.pt through evaluate.py on resets the run never played; "" or the error."""
    cmd = [
        sys.executable, "evaluate.py", "--checkpoint", str(out), "--which", "best",
        "--seed", str(seed + FRESH_SEED_OFFSET), "--num_eval_episodes", str(args.episodes),
        "--eval_envs", str(args.episodes), "--json", str(out / FRESH_JSON),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=GYM, capture_output=True, text=True, env=run_env(args))
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return ""


def summarize(row: Row, out: Path, recipe: Recipe) -> None:
    metrics, keys = read_metrics(out)
    best = best_index(metrics, keys, recipe)
    row.best_iteration = best + 1
    row.val_error = metrics[best].get("validation/action_error")
    row.returns = [metrics[best][k] for k in keys]
    row.last_max = metrics[-1][keys[0]]
    row.minutes = metrics[-1]["time/total"] / 60
    if recipe.by_return:
        row.selected_returns = row.returns
        fresh = fresh_returns(out, row.best_iteration)
        row.returns = fresh or []
        if fresh is None:
            row.error = "best.pt not evaluated afresh"


def fmt(v, spec: str = ".0f") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec)


def markdown(rows: list[Row]) -> str:
    head = [
        "dataset", "recipe", "model", "seed", "steps", "best iter", "R@max", "R@p50", "R@p10",
        "in-run R@max", "last R@max", "data p90", "val err", "R@max ≥ p90", "rising", "min",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(head) - 4)]
    # --table_only over more combinations than were trained lists what ran (all, if none did).
    shown = [r for r in rows if r.error != "not run"] or rows
    for r in shown:
        if r.error:
            what = r.error if r.error == "not run" else f"failed: {r.error}"
            cells = [r.dataset, r.recipe, r.model, str(r.seed), str(r.steps), what]
            lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
            continue
        ret = r.returns + [None] * (3 - len(r.returns))
        cells = [
            r.dataset, r.recipe, r.model, str(r.seed), str(r.steps), fmt(r.best_iteration, "d"),
            *(fmt(x) for x in ret), fmt(r.selected_returns[0] if r.selected_returns else None),
            fmt(r.last_max), fmt(r.p90), fmt(r.val_error, ".4g"),
            fmt(r.meets_p90), fmt(r.rising), fmt(r.minutes, ".1f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if len(shown) < len(rows):
        unrun = len(rows) - len(shown)
        lines.append(f"\n{unrun} more combinations were asked for but have not run.")
    return "\n".join(lines)


def seed_mean(done: list[Row]) -> tuple[np.ndarray, bool, bool]:
    """Mean returns over seeds (max, p50, p10) and the two checks the target is judged on."""
    mean = np.mean([r.returns for r in done], axis=0)
    return mean, bool(mean[0] >= done[0].p90), bool(mean[0] > mean[1] > mean[2])


BASELINE = "original"  # the recipe every other is compared with (issue 34: advice never worse)


def against_baseline(rows: list[Row], mine: list[Row]) -> tuple[float, float] | None:
    """R@max of ``mine`` minus the baseline recipe's on the same dataset and model (means over
    seeds), and the standard error of that difference (sqrt(s1²/n1 + s2²/n2), seed std ddof 1);
    None without two finished seeds on both sides."""
    ds, model = mine[0].dataset, mine[0].model
    base = [r for r in rows if (r.dataset, r.recipe, r.model) == (ds, BASELINE, model)]
    a = [r.returns[0] for r in mine if not r.error]
    b = [r.returns[0] for r in base if not r.error]
    if mine[0].recipe == BASELINE or len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    return float(np.mean(a) - np.mean(b)), se


def worse_than_baseline(rows: list[Row], recipes: list[str]) -> dict[str, list[str]]:
    """Per recipe compared, the datasets (for the target model) where its mean R@max is below
    the baseline's by more than twice the standard error of the difference."""
    worse: dict[str, list[str]] = {}
    for recipe in recipes:
        for ds in dict.fromkeys(r.dataset for r in rows):
            mine = [r for r in rows if (r.dataset, r.recipe, r.model) == (ds, recipe, TARGET_MODEL)]
            diff = against_baseline(rows, mine) if mine else None
            if diff is not None:
                worse.setdefault(recipe, [])
                if diff[0] + 2 * diff[1] < 0:
                    worse[recipe].append(f"{ds} ({diff[0]:+.0f} ± {diff[1]:.0f})")
    return worse


def summary_markdown(rows: list[Row]) -> str:
    """One line per dataset, recipe and model: the mean ± sample std over seeds, the two checks
    on the means (the target is judged on these), and R@max against the baseline recipe's."""
    head = ["dataset", "recipe", "model", "seeds", "R@max", "R@p50", "R@p10", "data p90"]
    head += ["R@max ≥ p90", "rising", f"R@max − {BASELINE}'s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.dataset, r.recipe, r.model), []).append(r)
    for (ds, recipe, model), mine in groups.items():
        done = [r for r in mine if not r.error]
        if not done:
            continue
        mean, meets, rising = seed_mean(done)
        std = np.std([r.returns for r in done], axis=0, ddof=1) if len(done) > 1 else np.zeros(3)
        cells = [ds, recipe, model, f"{len(done)}/{len(mine)}"]
        cells += [f"{m:.0f} ± {s:.0f}" if len(done) > 1 else f"{m:.0f}" for m, s in zip(mean, std)]
        cells += [fmt(done[0].p90), fmt(meets), "–" if model == "bc" else fmt(rising)]
        diff = against_baseline(rows, mine)
        cells.append(f"{diff[0]:+.0f} ± {diff[1]:.0f}" if diff else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_curves(rows: list[Row], args: argparse.Namespace, folder: Path) -> list[Path]:
    """Per dataset and DT backbone, the learning curves of every recipe and seed (plot.py's
    figure: return per target, training and validation error)."""
    from decision_transformer.run.plots import load_run, plot_runs

    written = []
    for ds in dict.fromkeys(r.dataset for r in rows):
        for model in dict.fromkeys(r.model for r in rows if r.model != "bc"):
            runs = []
            for r in rows:
                if (r.dataset, r.model) == (ds, model) and not r.error:
                    run = load_run(run_dir(args, r.dataset, r.recipe, r.model, r.seed))
                    run.label = f"{r.recipe} s{r.seed}"
                    runs.append(run)
            if runs:
                name = f"{ds.replace(':', '-').replace('/', '-')}-{model}.png"
                written.append(plot_runs(runs, folder / name, title=f"{ds}, {model} DT"))
    return written


def verdicts(rows: list[Row], datasets: list[str], recipes: list[str]) -> dict[str, list[str]]:
    """For the target model: per recipe, the datasets where the mean over seeds misses."""
    missed: dict[str, list[str]] = {}
    for recipe in recipes:
        missed[recipe] = []
        for ds in datasets:
            mine = [r for r in rows if (r.dataset, r.recipe, r.model) == (ds, recipe, TARGET_MODEL)]
            if not mine or all(r.error == "not run" for r in mine):
                missed[recipe].append(f"{ds} (not run)")
                continue
            if any(r.error for r in mine):
                missed[recipe].append(f"{ds} (failed or partly run)")
                continue
            _, meets, rising = seed_mean(mine)
            if not (meets and rising):
                missed[recipe].append(ds)
    return missed


def plan(args, datasets: list[tuple[str, str, str, int]]) -> None:
    total_s = 0.0
    runs = 0
    shared = shared_training(args.recipes)
    for _, _, _, data_steps in datasets:
        for name in args.recipes:
            if name in shared:
                continue  # read from the run it shares
            recipe = RECIPES[name]
            k = int(recipe.flags[recipe.flags.index("--K") + 1])
            steps = recipe.steps(args.steps, data_steps)
            evals = args.iters + (1 if recipe.by_return else 0)  # + best.pt's fresh evaluation
            for model in args.models:
                ms = MS_PER_STEP_BC if model == "bc" else MS_PER_STEP.get((model, k), 120)
                total_s += len(args.seeds) * (steps * ms / 1000 + evals * EVAL_SECONDS)
                runs += len(args.seeds)
    print(
        f"{runs} runs; estimated {total_s / 3600:.1f} hours on 2 idle CPU cores at the full "
        "model sizes (training at the measured ms/step, evaluation at ~60 s an iteration)"
    )
    for name, source in shared.items():
        print(f"{name}: no runs of its own, read from {source}'s (the same training)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("datasets", nargs="+", metavar="ENV:NAME", help="datasets to sweep")
    p.add_argument("--data_dir", default=str(GYM / "data"), help="folder of the dataset files")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=12000, help="budget: gradient steps per run")
    p.add_argument("--iters", type=int, default=4, help="evaluations (and best.pt candidates)")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per target")
    p.add_argument("--val_episodes", default="0.1", help="held-out episodes (count or fraction)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    p.add_argument("--tiny", action="store_true", help="tiny models: a smoke run of the sweep")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "recipes"))
    p.add_argument("--out_md", default=None, help="markdown table (default OUT/recipes.md)")
    p.add_argument("--out_json", default=None, help="JSON rows (default OUT/recipes.json)")
    p.add_argument("--plan", action="store_true", help="print runs and a CPU estimate, train none")
    p.add_argument("--table_only", action="store_true", help="report finished runs, train none")
    p.add_argument(
        "--curves", default=None, help="folder for learning-curve PNGs, one per dataset and DT"
    )
    args = p.parse_args()
    args.out = Path(args.out).resolve()
    args.data_dir = str(Path(args.data_dir).resolve())

    datasets = []
    for name in args.datasets:
        parsed = parse_dataset(name)
        if parsed is None:
            print(
                f"error: dataset '{name}' is not ENV:NAME (e.g. humanoid:collected)",
                file=sys.stderr,
            )
            return 2
        env, dataset = parsed
        try:
            data = load_dataset(args.data_dir, env, dataset)
        except Exception as e:  # a missing or unreadable file: say which, before any training
            if args.plan and suite.is_suite_name(f"{env}-{dataset}"):
                # A plan needs only the step count, which a suite dataset's name gives.
                steps = suite.parse_name(f"{env}-{dataset}")[2]
                print(
                    f"{name}: not built yet (cd gym && python data/make_suite.py --name "
                    f"{env}-{dataset} --out {args.data_dir}); planned at its {steps} steps"
                )
                datasets.append((name, env, dataset, steps, float("nan")))
                continue
            print(f"error: {name}: {e}", file=sys.stderr)
            return 2
        returns = data.returns
        p90 = float(np.percentile(returns, 90))
        print(
            f"{name}: {len(returns)} episodes, {data.num_steps} steps, return p10 "
            f"{np.percentile(returns, 10):.0f}, median {np.median(returns):.0f}, p90 {p90:.0f}, "
            f"max {returns.max():.0f}",
            flush=True,
        )
        datasets.append((name, env, dataset, data.num_steps, p90))
        del data
    if args.plan:
        plan(args, [(n, e, d, s) for n, e, d, s, _ in datasets])
        return 0

    print_lock = threading.Lock()

    shared = shared_training(args.recipes)

    def one(name, env, dataset, data_steps, p90, recipe_name, model, seed) -> Row:
        recipe = RECIPES[recipe_name]
        steps = recipe.steps(args.steps, data_steps)
        row = Row(name, recipe_name, model, seed, steps, p90)
        out = run_dir(args, name, shared.get(recipe_name, recipe_name), model, seed)
        if not finished(out, args.iters) and not args.table_only and recipe_name not in shared:
            row.error = train(args, env, dataset, recipe, model, seed, steps, out)
        if not row.error and finished(out, args.iters):
            summarize(row, out, recipe)
            if row.error and not args.table_only:  # a return-selected run's fresh evaluation
                row.error = evaluate_fresh(args, out, seed)
                if not row.error:
                    summarize(row, out, recipe)
        elif not row.error:
            row.error = "not run"
        line = f"{name} {recipe_name} {model} seed {seed}: " + (
            row.error or f"R@max {row.returns[0]:.0f} (p90 {p90:.0f})"
        )
        with print_lock:  # print() writes text and newline separately; threads would interleave
            print(line, flush=True)
        return row

    start = time.time()
    todo = [
        (*d, recipe_name, model, seed)
        for d in datasets
        for recipe_name in args.recipes
        for model in args.models
        for seed in args.seeds
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        trained = {t: pool.submit(one, *t) for t in todo if t[5] not in shared}
    # The shared rows read runs the pool has finished; rows keep the sweep's order.
    rows = [trained[t].result() if t in trained else one(*t) for t in todo]

    table = summary_markdown(rows) + "\n\nPer seed:\n\n" + markdown(rows)
    print(table)
    names = [d[0] for d in datasets]
    missed = verdicts(rows, names, args.recipes) if TARGET_MODEL in args.models else {}
    out_md = Path(args.out_md or args.out / "recipes.md")
    out_json = Path(args.out_json or args.out / "recipes.json")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(table + "\n")
    out_json.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "budget_steps": args.steps,
                "iters": args.iters,
                "episodes": args.episodes,
                "val_episodes": args.val_episodes,
                "recipes": {
                    n: {
                        "flags": RECIPES[n].flags,
                        "epochs": RECIPES[n].epochs,
                        "select_by": RECIPES[n].select_by,
                    }
                    for n in args.recipes
                },
                "rows": [
                    {**r.__dict__, "meets_p90": r.meets_p90, "rising": r.rising} for r in rows
                ],
                "missed": missed,
                f"worse_than_{BASELINE}": worse_than_baseline(rows, args.recipes),
            },
            indent=2,
        )  # fmt: skip
        + "\n"
    )
    print(f"table: {out_md}, {out_json}; {(time.time() - start) / 60:.1f} minutes")
    if args.curves:
        for path in write_curves(rows, args, Path(args.curves)):
            print(f"curves: {path}")
    for recipe, where in missed.items():
        print(
            f"{recipe}: " + (f"missed on {', '.join(where)}" if where else "met on every dataset")
        )
    for recipe, where in worse_than_baseline(rows, args.recipes).items():
        print(
            f"{recipe} against {BASELINE}: "
            + (f"worse beyond 2 SE on {', '.join(where)}" if where else "never worse beyond 2 SE")
        )
    if missed and all(missed.values()):
        print(
            f"missed target: no recipe gives the {TARGET_MODEL} DT R@max >= the dataset's p90 "
            "with returns rising with the target on every dataset (mean over seeds)",
            file=sys.stderr,
        )
        return 1
    failed = [f"{r.dataset} {r.recipe} {r.model} seed {r.seed}" for r in rows if r.error]
    if failed:
        print(f"missed target: runs failed or not run: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
