"""Does the validation error track the return? Read the run folders of a sweep and say, per
dataset and model, how an iteration's validation error ranks against its return at the top
target (R@max), and what choosing best.pt by each criterion would have returned.

    python benchmarks/bench_selection.py benchmarks/runs/recipes        # every run under it
    python benchmarks/bench_selection.py /work/runs34 --out_md sel.md --out_json sel.json

Every folder under the roots that holds a ``metrics.jsonl`` and a ``config.json`` is a run
(bench_recipes.py's layout, or any run of experiment.py / experiment_qwen.py); its iterations
that log both ``validation/action_error`` and an evaluation return are its points. Runs are
grouped by dataset (``env:dataset`` from config.json) and model (BC, or the DT's backbone).

Sign convention: rho is Spearman's rank correlation between the NEGATED validation error and
R@max, so rho = +1 means lower error always came with higher return (the error tracks the
return), 0 no relation, -1 lower error with lower return. Per group it reports:

- pooled rho over every point of every run (recipes and seeds mixed: it also ranks recipes
  against each other), with the count of points and its p-value;
- within-run rho: the mean of each run's own rho (runs with at least 3 points and some spread
  in both), and how many runs had rho > 0: what choosing an iteration inside one run relies on;
- selection, per run: R@max at the iteration of lowest validation error (what ``--select_by
  val_error`` keeps), at the iteration of highest R@max (what ``return@max`` keeps; in-run
  numbers, so an optimistic estimate of it), and at the last iteration, averaged over the runs.

A second table lists every run. Exits 2 when no run with such points is found.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

VALIDATION_KEY = "validation/action_error"
MIN_POINTS = 3  # a run's own rho needs at least this many iterations


@dataclass
class Run:
    path: str
    dataset: str
    model: str
    errors: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)  # R@max, per iteration with both

    @property
    def rho(self) -> float | None:
        if len(self.errors) < MIN_POINTS or min(np.ptp(self.errors), np.ptp(self.returns)) == 0:
            return None
        return float(spearmanr(-np.asarray(self.errors), self.returns).statistic)

    def at_lowest_error(self) -> float:
        return self.returns[int(np.argmin(self.errors))]  # ties keep the first, as best.pt


def top_return_key(row: dict) -> str | None:
    """The metrics key of the mean return at the highest target in an iteration's row."""
    keys = [k for k in row if k.startswith("evaluation/target_") and k.endswith("_return_mean")]
    if not keys:
        return None
    return max(keys, key=lambda k: float(k.split("target_")[1].rsplit("_return_mean")[0]))


def read_run(folder: Path, root: Path) -> Run | None:
    try:
        config = json.loads((folder / "config.json").read_text())
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x]
    except (OSError, ValueError):
        return None
    model = "bc" if config.get("model_type") == "bc" else str(config.get("backbone", "dt"))
    run = Run(str(folder.relative_to(root)), f"{config.get('env')}:{config.get('dataset')}", model)
    for row in rows:
        key = top_return_key(row)
        if key is not None and VALIDATION_KEY in row:
            run.errors.append(float(row[VALIDATION_KEY]))
            run.returns.append(float(row[key]))
    return run if run.errors else None


def find_runs(roots: list[Path]) -> list[Run]:
    runs = []
    for root in roots:
        for metrics in sorted(root.rglob("metrics.jsonl")):
            run = read_run(metrics.parent, root)
            if run is not None:
                runs.append(run)
    return runs


def nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def group_summary(runs: list[Run]) -> dict:
    errors = np.concatenate([r.errors for r in runs])
    returns = np.concatenate([r.returns for r in runs])
    pooled, p = None, None
    if len(errors) >= MIN_POINTS and min(np.ptp(errors), np.ptp(returns)) > 0:
        result = spearmanr(-errors, returns)
        pooled, p = float(result.statistic), float(result.pvalue)
    own = [r.rho for r in runs if r.rho is not None]
    return {
        "runs": len(runs),
        "points": int(len(errors)),
        "pooled_rho": nan_to_none(pooled),
        "pooled_p": nan_to_none(p),
        "runs_with_rho": len(own),
        "within_run_rho": float(np.mean(own)) if own else None,
        "runs_rho_positive": sum(x > 0 for x in own),
        "R@max_at_lowest_error": float(np.mean([r.at_lowest_error() for r in runs])),
        "R@max_at_best_return": float(np.mean([max(r.returns) for r in runs])),
        "R@max_at_last": float(np.mean([r.returns[-1] for r in runs])),
    }


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def tables(groups: dict[tuple[str, str], list[Run]]) -> tuple[str, str, dict]:
    head = [
        "dataset", "model", "runs", "points", "pooled rho", "p", "within-run rho (runs)",
        "runs rho > 0", "R@max: lowest val err", "R@max: best (in-run)", "R@max: last",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    summaries = {}
    for (dataset, model), runs in groups.items():
        s = group_summary(runs)
        summaries[f"{dataset} {model}"] = s
        cells = [
            dataset, model, str(s["runs"]), str(s["points"]), fmt(s["pooled_rho"]),
            fmt(s["pooled_p"], ".2g"), f"{fmt(s['within_run_rho'])} ({s['runs_with_rho']})",
            f"{s['runs_rho_positive']}/{s['runs_with_rho']}", f"{s['R@max_at_lowest_error']:.0f}",
            f"{s['R@max_at_best_return']:.0f}", f"{s['R@max_at_last']:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    per_run = ["| run | dataset | model | points | rho | R@max: lowest val err | best | last |"]
    per_run.append("|---|---|---|---:|---:|---:|---:|---:|")
    for runs in groups.values():
        for r in runs:
            cells = [
                r.path, r.dataset, r.model, str(len(r.errors)), fmt(r.rho),
                f"{r.at_lowest_error():.0f}", f"{max(r.returns):.0f}", f"{r.returns[-1]:.0f}",
            ]  # fmt: skip
            per_run.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), "\n".join(per_run), summaries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("roots", nargs="+", metavar="FOLDER", help="folders holding run folders")
    p.add_argument("--out_md", default=None, help="also write the tables as markdown here")
    p.add_argument("--out_json", default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    roots = [Path(r).resolve() for r in args.roots]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}; name sweep folders", file=sys.stderr)
        return 2
    runs = find_runs(roots)
    if not runs:
        print(
            "error: no run under "
            + ", ".join(map(str, roots))
            + " logs both a validation error and an evaluation return; run a sweep with "
            "--val_episodes and evaluation first",
            file=sys.stderr,
        )
        return 2
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.model), []).append(run)
    summary, per_run, numbers = tables(groups)
    text = (
        "rho: Spearman rank correlation of -(validation error) with R@max per iteration "
        "(+1: lower error, higher return)\n\n" + summary + "\n\nPer run:\n\n" + per_run
    )
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text + "\n")
    if args.out_json:
        record = {"groups": numbers, "runs": [asdict(r) | {"rho": r.rho} for r in runs]}
        Path(args.out_json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
