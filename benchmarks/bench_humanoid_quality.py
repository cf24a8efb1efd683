"""Does a small Decision Transformer learn Humanoid from the embedded dataset on a CPU?

    python benchmarks/bench_humanoid_quality.py                 # 12-minute training budget each
    python benchmarks/bench_humanoid_quality.py --minutes 3 --models qwen3 --seed 1 --K 20
    python benchmarks/bench_humanoid_quality.py --models qwen3 --attention window --segment_len 20

Makes the offline dataset if missing (gym/data/humanoid-collected-v2.pkl), then trains the small
Qwen3 DT, a GPT-2 DT of about the same size, BC (an MLP on the current state) and 10% BC (the same
on the best episodes only), each for the same wall-clock training budget on this machine, through
the real experiment scripts: 100 steps are timed first to turn the budget into a step count.
Each model is evaluated on 20 episodes per target, conditioned on the dataset's best return, its
median and its 10th percentile. Prints a markdown table; the target is a mean return at the
best-return target of at least the dataset's 90th-percentile episode return, with returns rising
with the target, for the Qwen3 DT; the script exits 1 naming it when missed (BC cannot meet the
second half: it does not see the target).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GYM = ROOT / "gym"
sys.path.insert(0, str(GYM))

from decision_transformer.data.loading import load_dataset  # noqa: E402

COMMON = [
    "--env",
    "humanoid",
    "--dataset",
    "collected",
    "--batch_size",
    "64",
    "--learning_rate",
    "1e-3",
    "--weight_decay",
    "1e-4",
    "--warmup_steps",
    "200",
    "--lr_decay",
    "cosine",
    "--eval_envs",
    "20",
    "--device",
    "cpu",
]
# Steps timed to size each model's budget; fewer misjudge it by 10-20% (first-step overheads).
PROBE_STEPS = 100
# BC on the current state alone: flattening K states of 348 features into one MLP input (the
# original's BC) learns far slower here, and the baseline should be the strong one.
BC = ["--model_type", "bc", "--embed_dim", "256", "--n_layer", "3", "--K", "1"]
# Sizes matched: ~0.6M backbone parameters each.
# The models the quality target is set for (a missed target makes the script exit 1).
QUALITY_TARGET_MODELS = ("qwen3",)
MODELS = {
    "qwen3": (
        "experiment_qwen.py",
        [
            "--embed_dim",
            "128",
            "--n_layer",
            "3",
            "--n_head",
            "4",
            "--n_kv_head",
            "2",
            "--mlp_ratio",
            "3.0",
            "--dtype",
            "bf16",
        ],
    ),
    "gpt2": ("experiment.py", ["--embed_dim", "128", "--n_layer", "3", "--n_head", "4"]),
    "bc": ("experiment.py", BC),
    # The paper's %BC: the same BC on the best episodes only (those making up 10% of the steps),
    # which needs to be told what the DT finds out from the returns.
    "bc10": ("experiment.py", [*BC, "--pct_traj", "0.1"]),
}
DTS = ("qwen3", "gpt2")  # the models --attention and --segment_len apply to


def run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, script, *args], cwd=GYM, check=True, stdout=subprocess.DEVNULL)


def last_row(out_dir: Path) -> dict:
    return json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])


def train(name: str, args: argparse.Namespace, targets: list[str]) -> None:
    script, flags = MODELS[name]
    # BC's own --K comes later and wins.
    flags = ["--K", str(args.K), "--dropout", str(args.dropout), *flags]
    if name in DTS:
        flags += ["--attention", args.attention, "--segment_len", str(args.segment_len or args.K)]
    with tempfile.TemporaryDirectory() as tmp:  # step time of this model on this machine
        run(
            script,
            *COMMON,
            *flags,
            "--max_iters",
            "1",
            "--num_steps_per_iter",
            str(PROBE_STEPS),
            "--num_eval_episodes",
            "0",
            "--out_dir",
            tmp,
        )
        step = last_row(Path(tmp))["time/training"] / PROBE_STEPS
    steps = max(1, int(args.minutes * 60 / step / args.iters))
    out = run_dir(args, name)
    for stale in ("checkpoint.pt", "metrics.jsonl"):
        (out / stale).unlink(missing_ok=True)
    run(
        script,
        *COMMON,
        *flags,
        "--max_iters",
        str(args.iters),
        "--num_steps_per_iter",
        str(steps),
        "--num_eval_episodes",
        str(args.episodes),
        "--env_targets",
        *targets,
        "--seed",
        str(args.seed),
        "--out_dir",
        str(out),
    )
    print(f"{name}: trained", flush=True)


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """Window-attention runs get their own directories, next to the full-attention ones."""
    suffix = f"-window-s{args.segment_len or args.K}" if args.attention == "window" else ""
    return args.out / f"humanoid-collected-{name}{suffix if name in DTS else ''}"


def summarize(name: str, out: Path) -> tuple:
    """(model, params, K, steps, training minutes, returns and stds at the targets, best first,
    evaluation seconds per iteration)."""
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())
    final = metrics[-1]
    # keys look like evaluation/target_4928.4_return_mean
    keys = sorted(
        (k for k in final if k.endswith("_return_mean")),
        key=lambda k: -float(k.split("target_")[1].split("_")[0]),
    )
    minutes = sum(m["time/training"] for m in metrics) / 60
    steps = cfg["max_iters"] * cfg["num_steps_per_iter"]
    stds = [final[k.replace("_mean", "_std")] for k in keys]
    if cfg.get("attention") == "window":
        name = f"{name} window S={cfg['segment_len']}"
    evaluation = np.mean([m["time/evaluation"] for m in metrics])
    return name, cfg["params"], cfg["K"], steps, minutes, [final[k] for k in keys], stds, evaluation


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0, help="training budget per model")
    p.add_argument("--iters", type=int, default=3, help="evaluations along the way")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per target")
    p.add_argument("--seed", type=int, default=0, help="training and evaluation seed")
    p.add_argument("--K", type=int, default=5, help="context length of the DTs")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of every model")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "runs"), help="run directories")
    p.add_argument(
        "--attention",
        default="full",
        choices=["full", "window"],
        help="attention of the DTs (qwen3, gpt2); window evaluates with the key/value cache",
    )
    p.add_argument("--segment_len", type=int, default=None, help="DT training segment (default K)")
    p.add_argument("--table_only", action="store_true", help="report existing runs, train nothing")
    args = p.parse_args()
    args.out = Path(args.out).resolve()  # the runs work from gym/, not from the caller's folder

    data = GYM / "data"
    if not (data / "humanoid-collected-v2.pkl").exists():
        run("data/collect_dataset.py", "--env", "humanoid", "--out", str(data))
    returns = load_dataset(data, "humanoid", "collected").returns
    targets = ["max", "p50", "p10"]
    p90 = float(np.percentile(returns, 90))
    print(
        f"dataset: {len(returns)} episodes, return p10 {np.percentile(returns, 10):.0f}, "
        f"median {np.median(returns):.0f}, p90 {p90:.0f}, max {returns.max():.0f}"
    )

    for name in args.models:
        if not args.table_only:
            train(name, args, targets)
    rows = [summarize(name, run_dir(args, name)) for name in args.models]

    header = (
        "| model | params | K | steps | train min | R @ max | R @ median | R @ p10 | ≥ p90? "
        "| rising? | eval s/iter |"
    )
    print("\n" + header + "\n|" + "---|" * 11)
    missed = []
    for name, params, k, steps, minutes, rets, stds, evaluation in rows:
        cells = " | ".join(f"{r:.0f} ± {s:.0f}" for r, s in zip(rets, stds))
        ok = "yes" if rets[0] >= p90 else "no"
        rising = "yes" if rets[0] > rets[1] > rets[2] else "no"
        row = f"| {name} | {params:,} | {k} | {steps:,} | {minutes:.1f} | {cells} |"
        print(f"{row} {ok} | {rising} | {evaluation:.0f} |")
        if name.split()[0] in QUALITY_TARGET_MODELS and "no" in (ok, rising):
            missed.append(f"{name}: R @ max {rets[0]:.0f} (p90 {p90:.0f}), rising {rising}")
    for m in missed:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
