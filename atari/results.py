"""Evaluation results of Atari runs as tables: one run's evaluation, and several seeds of one
setting aggregated (per-seed returns, then mean ± std across seeds of the raw return, the
human-normalized score and the paper's gamer-normalized score).

    python results.py runs/Breakout-reward_conditioned-gpt-s1 runs/...-s2 runs/...-s3 [--json F]

A run's result is its last evaluation: the last row of its metrics.jsonl that has one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import _paths  # noqa: F401
from atari_env import gamer_normalized, human_normalized
from decision_transformer.errors import ConfigError
from decision_transformer.run.paths import PathError, check_output_file

# Chen et al. 2021, Table 1 (gamer-normalized, mean ± std over 3 seeds), for printing beside.
PAPER_TABLE1 = {
    ("Breakout", "reward_conditioned"): (267.5, 97.5),
    ("Breakout", "naive"): (138.9, 61.7),
    ("Qbert", "reward_conditioned"): (15.4, 11.4),
    ("Qbert", "naive"): (17.3, 14.7),
    ("Pong", "reward_conditioned"): (106.1, 8.1),
    ("Pong", "naive"): (85.2, 20.0),
    ("Seaquest", "reward_conditioned"): (2.5, 0.4),
    ("Seaquest", "naive"): (2.1, 0.3),
}


def summarize(game: str, target: float | None, returns: list[float]) -> dict:
    """One evaluation: raw returns, their mean and std, and both normalized scores of the mean."""
    mean = statistics.fmean(returns)
    out = {
        "game": game,
        "target": target,
        "episodes": len(returns),
        "returns": [float(r) for r in returns],
        "return_mean": mean,
        "return_std": statistics.pstdev(returns) if len(returns) > 1 else 0.0,
    }
    for key, fn in (("human_normalized", human_normalized), ("gamer_normalized", gamer_normalized)):
        score = fn(game, mean)
        if score is not None:
            out[key] = score
    return out


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.1f} ± {std:.1f}"


def eval_table(rows: list[dict]) -> str:
    """A markdown table of evaluations (``summarize`` dicts plus an optional 'run' name)."""
    head = "| run | target | episodes | raw return (mean ± std) | human-norm. | gamer-norm. |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        target = "–" if r.get("target") is None else f"{r['target']:g}"
        lines.append(
            f"| {r.get('run', r['game'])} | {target} | {r['episodes']} | "
            f"{_pm(r['return_mean'], r['return_std'])} | {_num(r.get('human_normalized'))} | "
            f"{_num(r.get('gamer_normalized'))} |"
        )
    return "\n".join(lines)


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample std (n - 1) across seeds, as "mean ± std over 3 seeds" is usually reported.
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(per_seed: dict[int, dict]) -> dict:
    """Mean ± std across seeds of each seed's mean raw return and normalized scores."""
    out: dict = {"seeds": sorted(per_seed)}
    for key in ("return_mean", "human_normalized", "gamer_normalized"):
        values = [per_seed[s][key] for s in sorted(per_seed) if key in per_seed[s]]
        if len(values) == len(per_seed):
            out[key] = _mean_std(values)
    return out


def seed_table(game: str, model_type: str, per_seed: dict[int, dict]) -> str:
    """Per-seed rows, then the mean ± std across seeds, then the paper's Table 1 entry."""
    rows = [dict(r, run=f"seed {s}") for s, r in sorted(per_seed.items())]
    lines = [eval_table(rows)]
    agg = aggregate(per_seed)
    lines.append(
        f"| **mean ± std over {len(per_seed)} seeds** | | | "
        f"**{_pm(*agg['return_mean'])}** | "
        f"{_pm(*agg['human_normalized']) if 'human_normalized' in agg else '–'} | "
        f"{_pm(*agg['gamer_normalized']) if 'gamer_normalized' in agg else '–'} |"
    )
    paper = PAPER_TABLE1.get((game, model_type))
    if paper is not None:
        lines.append(f"| paper (Chen et al. 2021, Table 1) | | | | | {_pm(*paper)} |")
    return "\n".join(lines)


def last_evaluation(run: Path) -> tuple[dict, dict]:
    """(config, summarize() of the run's last evaluation)."""
    run = Path(run)
    cfg_path, metrics = run / "config.json", run / "metrics.jsonl"
    if not cfg_path.is_file() or not metrics.is_file():
        raise ConfigError(f"{run} is not an Atari run directory (no config.json/metrics.jsonl)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("games"):
        raise ConfigError(
            f"{run} is a multi-game run (--games): its per-game table is plot_atari.py {run} "
            "--table; the seed table takes single-game runs"
        )
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    evals = [r for r in rows if "eval/returns" in r]
    if not evals:
        raise ConfigError(f"{metrics} has no evaluation yet; run evaluate_atari.py --checkpoint")
    last = evals[-1]
    return cfg, summarize(cfg["game"], last.get("eval/target"), last["eval/returns"])


def runs_table(runs: list[Path]) -> tuple[str, dict]:
    per_seed, setting = {}, set()
    for run in runs:
        cfg, res = last_evaluation(run)
        if cfg["seed"] in per_seed:
            raise ConfigError(f"two runs with seed {cfg['seed']}; pass one run per seed")
        per_seed[cfg["seed"]] = res
        setting.add((cfg["game"], cfg["model_type"]))
    if len(setting) != 1:
        raise ConfigError(f"the runs mix settings {sorted(setting)}; pass runs of one setting")
    game, model_type = setting.pop()
    table = seed_table(game, model_type, per_seed)
    return table, {"per_seed": per_seed, "aggregate": aggregate(per_seed)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories, one per seed")
    p.add_argument("--json", type=Path, default=None, help="also write the table's numbers here")
    args = p.parse_args(argv)
    try:
        if args.json:
            check_output_file(args.json, "--json")
        table, data = runs_table(args.runs)
    except (ConfigError, PathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
