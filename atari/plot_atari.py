"""Learning curves and a table of Atari runs (run_dt_atari.py out_dirs).

    python plot_atari.py runs/RUN_A runs/RUN_B --out curves.png [--table]

Panels: evaluation return (mean ± std over episodes) against training step, the paper's
gamer-normalized score, and the training loss; one line per run, labelled by model type,
backbone and seed (a multi-game run, --games: one line per game). ``--table`` prints each run's
last evaluation (the table training prints).
(The gym half's plot.py reads the MuJoCo runs' metric names, not these.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _paths  # noqa: F401
from decision_transformer.errors import ConfigError
from decision_transformer.run.paths import PathError, check_output_file
from results import eval_table, last_evaluation


def load(run: Path) -> tuple[dict, list[dict]]:
    cfg_path, metrics = run / "config.json", run / "metrics.jsonl"
    if not cfg_path.is_file() or not metrics.is_file():
        from pretrained_atari import is_model_folder

        if is_model_folder(run):  # export_atari.py's (or a run's {out_dir}/model)
            raise ConfigError(
                f"{run} is a model folder: it holds one measured evaluation (its README.md; "
                "evaluate_atari.py measures it again), not training curves: plot the run folder "
                "it was exported from"
                + (f", {run.parent}" if (run.parent / "metrics.jsonl").is_file() else "")
            )
        raise ConfigError(f"{run} is not an Atari run directory (no config.json/metrics.jsonl)")
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if not rows:
        raise ConfigError(f"{metrics} has no rows yet")
    return json.loads(cfg_path.read_text()), rows


def label(cfg: dict, game: str | None = None) -> str:
    kind = "BC" if cfg["model_type"] == "naive" else "DT"
    multi = " (multi-game)" if game else ""
    return f"{game or cfg['game']} {kind} {cfg['backbone']} s{cfg['seed']}{multi}"


def lines(cfg: dict, rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """``(label, rows)`` per curve: the run's own, or for a multi-game run (--games) one per
    game, its ``eval/<Game>/...`` keys read as ``eval/...`` (the loss, shared, on the first)."""
    if not cfg.get("games"):
        return [(label(cfg), rows)]
    out = []
    for i, game in enumerate(cfg["games"]):
        pre = f"eval/{game}/"
        view = [
            {"step": r["step"], **({"train/loss": r["train/loss"]} if i == 0 and "train/loss" in r
                                   else {}),
             **{"eval/" + k[len(pre) :]: v for k, v in r.items() if k.startswith(pre)}}
            for r in rows
        ]  # fmt: skip
        out.append((label(cfg, game), view))
    return out


def table_rows(path: Path) -> list[dict]:
    """Rows of --table: the run's last evaluation, or one per game of a multi-game run."""
    cfg = json.loads((path / "config.json").read_text())
    if not cfg.get("games"):
        cfg, res = last_evaluation(path)
        return [dict(res, run=label(cfg))]
    from multigame import games_from_row

    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in rows if any(k.endswith("/returns") for k in r)]
    if not evals:
        raise ConfigError(f"{path} has no evaluation yet; run evaluate_atari.py --checkpoint")
    games = games_from_row(cfg, evals[-1])
    return [dict(res, run=label(cfg, game)) for game, res in games.items()]


def plot(runs: list[tuple[dict, list[dict]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    panels = [
        ("eval/return_mean", "evaluation return (mean ± std)"),
        ("eval/gamer_normalized", "gamer-normalized (the paper's metric)"),
        ("train/loss", "training loss (action cross-entropy)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, rows in (line for cfg, run_rows in runs for line in lines(cfg, run_rows)):
        for ax, (key, _) in zip(axes, panels):
            pts = [(r["step"], r[key], r.get("eval/return_std")) for r in rows if key in r]
            if not pts:
                continue
            steps, values, stds = zip(*pts)
            (line,) = ax.plot(steps, values, marker="o", markersize=3, label=name)
            if key == "eval/return_mean" and None not in stds:
                lo = [v - s for v, s in zip(values, stds)]
                hi = [v + s for v, s in zip(values, stds)]
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None, help="PNG/PDF/SVG (default curves.png)")
    p.add_argument("--table", action="store_true", help="print each run's last evaluation")
    args = p.parse_args(argv)
    try:
        if args.out is not None:  # before reading any run
            check_output_file(args.out, "--out", make_parent=True)
        runs = [load(r) for r in args.runs]
        if args.table:
            print(eval_table([row for path in args.runs for row in table_rows(path)]))
        if args.out is not None or not args.table:
            print(f"curves: {plot(runs, args.out or Path('curves.png'))}")
    except (ConfigError, PathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
