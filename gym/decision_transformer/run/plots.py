"""plot.py: learning curves and a comparison table of run directories.

A run directory is what experiment.py writes: ``config.json`` (flags and parameter counts) and
``metrics.jsonl`` (one row per iteration). Runs are labelled by backbone and size, e.g.
"qwen3 1.2M", so runs of different models read apart on one figure.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .cli import HelpFormatter, OneLineParser, run_cli
from .metrics import read_metrics
from .paths import check_output_file

# A multi-task run (--tasks) keys each task's numbers evaluation/<task>/target_..., and the
# mean normalized score over its tasks evaluation/mean/<label>_normalized_score.
_RETURN_KEY = re.compile(r"^evaluation/(?:(?P<task>[^/]+)/)?target_(?P<target>.+)_return_mean$")
_MEAN_KEY = re.compile(r"^evaluation/mean/(?P<label>.+)_normalized_score$")
TRAIN_LOSS = "training/train_loss_mean"
VAL_ERROR = "validation/action_error"  # runs with --val_episodes (--tasks: the mean over tasks)
# A multi-task run with --val_episodes: each task's validation error.
_VAL_TASK_KEY = re.compile(r"^validation/(?P<task>[^/]+)/action_error$")


def val_task_key(task: str) -> str:
    return f"validation/{task}/action_error"


class RunError(UserError, ValueError):
    """A path that is not a readable run directory."""


@dataclass
class Run:
    path: Path
    config: dict
    rows: list[dict]
    label: str = ""
    # x axis: optimizer steps, or env steps collected online (0 through the offline phase)
    x: str = "step"

    @property
    def targets(self) -> list[str]:
        """Target names as in the metric keys ('6000', '3000'; a multi-task run's
        'hopper-medium/3600'), by task, then highest first."""
        found = {
            f"{m['task']}/{m['target']}" if m["task"] else m["target"]
            for row in self.rows
            for k in row
            if (m := _RETURN_KEY.match(k))
        }
        return sorted(found, key=_target_order)

    @property
    def means(self) -> list[str]:
        """A multi-task run's labels of its mean normalized scores ('max', 'target1')."""
        found = {m["label"] for row in self.rows for k in row if (m := _MEAN_KEY.match(k))}
        return sorted(found)

    @property
    def val_tasks(self) -> list[str]:
        """A multi-task run's tasks with a validation error of their own."""
        found = {m["task"] for row in self.rows for k in row if (m := _VAL_TASK_KEY.match(k))}
        return sorted(found)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        x = (lambda r: r["step"]) if self.x == "step" else (lambda r: r.get("online/env_steps", 0))
        steps = [x(row) for row in self.rows if key in row]
        return steps, [row[key] for row in self.rows if key in row]

    def step_time(self) -> float | None:
        """Median seconds per gradient step: the first iteration's warm-up does not skew it."""
        # Steps per row from consecutive rows: online rounds take --online_updates steps each.
        prev, per_step = 0, []
        for row in self.rows:
            if "time/training" in row and row.get("step", 0) > prev:
                per_step.append(row["time/training"] / (row["step"] - prev))
            prev = row.get("step", prev)
        return statistics.median(per_step) if per_step else None


def _target_order(name: str) -> tuple[str, int, float, str]:
    task, _, target = name.rpartition("/")
    try:
        return (task, 0, -float(target), target)
    except ValueError:
        return (task, 1, 0.0, target)


def metric_key(target: str, stat: str) -> str:
    """``evaluation/target_3600_<stat>``, or a task's ``evaluation/<task>/target_3600_<stat>``."""
    task, _, value = target.rpartition("/")
    return f"evaluation/{task + '/' if task else ''}target_{value}_{stat}"


def target_title(target: str) -> str:
    task, _, value = target.rpartition("/")
    return f"{task} target {value}" if task else f"target {value}"


def human_count(n: int | None) -> str:
    if not n:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"
    return str(n)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if path.is_file():  # a checkpoint or metrics file: its folder is the run
        path = path.parent
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise RunError(_not_a_run(path))
    try:
        rows = read_metrics(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{metrics} is not valid JSON lines: {e}") from None
    if not rows:
        raise RunError(f"{metrics} has no rows yet")
    config_path = path / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return Run(path, config, rows)


def _not_a_run(path: Path) -> str:
    """Why ``path`` has no curves. A model folder (export.py) or a Hub repo holding one carries
    the weights, the config and one measured evaluation (its card), not the run's
    metrics.jsonl: the curves stay with the run folder it was exported from."""
    from ..models.pretrained import is_model_source

    if not path.exists():
        hub = " (a Hub model repo holds no training curves)" if is_model_source(str(path)) else ""
        return f"no run folder at {path}: plot.py reads local run folders{hub}"
    if not is_model_source(str(path)):
        return f"{path} is not a run directory (no metrics.jsonl)"
    run = path.parent if (path.parent / "metrics.jsonl").is_file() else None
    where = f"plot its run folder {run}" if run else "plot the run folder it was exported from"
    return (
        f"{path} is a model folder: it holds one measured evaluation (its README.md; "
        f"evaluate_pretrained.py measures it again), not training curves: {where}"
    )


def label_runs(runs: list[Run]) -> None:
    """'backbone size'; runs that would share a label get their directory name too."""
    base = [
        f"{r.config.get('backbone') or r.config.get('model_type') or '?'} "
        f"{human_count(r.config.get('params'))}"
        for r in runs
    ]
    for run, label in zip(runs, base):
        run.label = label if base.count(label) == 1 else f"{label} ({run.path.name})"


def plot_runs(runs: list[Run], out: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    targets = sorted({t for r in runs for t in r.targets}, key=_target_order)
    scored = [
        t for t in targets if any(r.series(metric_key(t, "normalized_score"))[0] for r in runs)
    ]
    means = sorted({m for r in runs for m in r.means})
    val_tasks = sorted({t for r in runs for t in r.val_tasks})
    panels = [("return", t) for t in targets] + [("score", t) for t in scored]
    panels += [("mean", m) for m in means] + [("loss", None)]
    panels += [("val", t) for t in val_tasks]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (kind, target) in zip(axes.flat, panels):
        for i, run in enumerate(runs):
            _draw_run(ax, run, kind, target, colors[i % len(colors)])
        _label_panel(ax, runs, kind, target)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    # Top band, in inches: the title's line, then the legend's rows; the panels go below it.
    ncol = min(4, len(runs))
    height = fig.get_figheight()
    title_in = 0.4 if title else 0.0
    legend_in = 0.3 * math.ceil(len(runs) / ncol) + 0.1
    if title:
        fig.suptitle(title, y=1.0, va="top")
    fig.legend(
        handles, labels, loc="upper center", ncol=ncol, frameon=False,
        bbox_to_anchor=(0.5, 1.0 - title_in / height),
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1.0 - (title_in + legend_in) / height))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def _draw_run(ax, run: Run, kind: str, target: str | None, color: str) -> None:
    """One run's curve on a panel: a target's return (mean, a band of ± std), its normalized
    score, or the training loss (the validation error dashed beside it)."""
    # Markers keep runs of a single iteration visible as points.
    style = dict(color=color, label=run.label, marker="o", markersize=3)
    if kind == "return":
        steps, mean = run.series(metric_key(target, "return_mean"))
        _, std = run.series(metric_key(target, "return_std"))
        ax.plot(steps, mean, **style)
        if len(std) == len(mean):
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
    elif kind == "score":
        ax.plot(*run.series(metric_key(target, "normalized_score")), **style)
    elif kind == "mean":
        ax.plot(*run.series(f"evaluation/mean/{target}_normalized_score"), **style)
    elif kind == "val":
        ax.plot(*run.series(val_task_key(target)), **{**style, "linestyle": "--"})
    else:
        ax.plot(*run.series(TRAIN_LOSS), **style)
        # The held-out episodes' error, dashed in the run's colour: a gap that opens
        # while the training loss keeps falling is overfitting.
        steps, val = run.series(VAL_ERROR)
        if val:
            ax.plot(steps, val, **{**style, "linestyle": "--", "label": None})


def _label_panel(ax, runs: list[Run], kind: str, target: str | None) -> None:
    if kind == "return":
        ax.set_title(f"return, {target_title(target)}")
        ax.set_ylabel("episode return (mean ± std)")
    elif kind == "score":
        ax.set_title(f"normalized score, {target_title(target)}")
        ax.set_ylabel("normalized score")
    elif kind == "mean":
        ax.set_title(f"mean normalized score over tasks, {target}")
        ax.set_ylabel("normalized score")
    elif kind == "val":
        ax.set_title(f"validation error, {target}")
        ax.set_ylabel("action MSE (held-out episodes)")
    else:
        validated = any(r.series(VAL_ERROR)[0] for r in runs)
        ax.set_title(
            "training (solid) / validation (dashed) loss" if validated else "training loss"
        )
        stochastic = any(r.config.get("policy") == "stochastic" for r in runs)
        ax.set_ylabel("NLL - temperature x entropy" if stochastic else "action MSE")
        losses = [v for r in runs for k in (TRAIN_LOSS, VAL_ERROR) for v in r.series(k)[1]]
        # Log scale only pays off once the loss has fallen by an order of magnitude.
        if losses and min(losses) > 0 and max(losses) / min(losses) > 10:
            ax.set_yscale("log")
    ax.set_xlabel("training step" if runs[0].x == "step" else "online env steps")
    ax.grid(alpha=0.3)


def _final_best(values: list[float]) -> str:
    return f"{values[-1]:.1f} / {max(values):.1f}" if values else "–"


def markdown_table(runs: list[Run]) -> str:
    """One row per run; returns and scores as 'final / best' over its evaluations."""
    targets = sorted({t for r in runs for t in r.targets}, key=_target_order)
    scored = [
        t for t in targets if any(r.series(metric_key(t, "normalized_score"))[0] for r in runs)
    ]
    head = ["run", "backbone", "params", "steps", "step time"]
    head += [f"return @{t} (final / best)" for t in targets]
    head += [f"score @{t} (final / best)" for t in scored]
    validated = any(r.series(VAL_ERROR)[0] for r in runs)
    if validated:
        head.append("val error (final / best)")
    val_tasks = sorted({t for r in runs for t in r.val_tasks})
    head += [f"val error @{t} (final / best)" for t in val_tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for run in runs:
        step_time = run.step_time()
        cells = [
            run.path.name,
            str(run.config.get("backbone") or run.config.get("model_type") or "?")
            + (" window" if run.config.get("attention") == "window" else ""),
            human_count(run.config.get("params")),
            str(run.rows[-1].get("step", "?")),
            f"{1000 * step_time:.1f} ms" if step_time is not None else "–",
        ]
        cells += [_final_best(run.series(metric_key(t, "return_mean"))[1]) for t in targets]
        cells += [_final_best(run.series(metric_key(t, "normalized_score"))[1]) for t in scored]
        keys = ([VAL_ERROR] if validated else []) + [val_task_key(t) for t in val_tasks]
        for key in keys:
            val = run.series(key)[1]
            cells.append(f"{val[-1]:.4g} / {min(val):.4g}" if val else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_figure_path(out: str) -> None:
    """A writable file with an extension matplotlib can save, before any run is read."""
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if Path(out).suffix.lower().lstrip(".") not in kinds:
        raise RunError(f"--out {out}: the figure must end in one of .{', .'.join(sorted(kinds))}")
    check_output_file(out, "--out", make_parent=True)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        formatter_class=HelpFormatter,
        description="Learning curves (return and normalized score per target, training loss) "
        "of run directories, one line per run; --table prints a comparison table.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (experiment.py out_dir)")
    p.add_argument(
        "--out",
        default=None,
        help="PNG (or .pdf/.svg) to write; default curves.png, or no figure with --table alone",
    )
    p.add_argument("--table", action="store_true", help="print a markdown table of the runs")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument(
        "--x",
        default="step",
        choices=["step", "env_steps"],
        help="x axis: optimizer steps, or env steps collected by online fine-tuning "
        "(--online_rounds; 0 during the offline phase)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(plot_main, args)


def plot_main(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_figure_path(args.out)
    runs = [load_run(r) for r in args.runs]
    for run in runs:
        run.x = args.x
    label_runs(runs)
    if args.table:
        print(markdown_table(runs))
    if args.out is not None or not args.table:
        out = plot_runs(runs, args.out or "curves.png", args.title)
        print(f"curves: {out}")
    return 0
