"""Does online fine-tuning (the Online Decision Transformer) take a DT past its data on Humanoid?

    python benchmarks/bench_odt.py                      # the full run: 4 x (pretrain + 60 CPU-min)
    python benchmarks/bench_odt.py --smoke              # a tiny end-to-end check of the script
    python benchmarks/bench_odt.py --control            # + offline runs given as many updates

The dataset: the embedded ``humanoid-collected`` recipe (``gym/data/collect_dataset.py``, the
balance controller with rising action noise and knee bending, 1000 episodes) restricted to its
episodes of return below ``--max_return`` (default 1000: those that sink into a crouch and fall
within ~200 steps; standing for the whole episode is worth ~4940). Written as
``humanoid-low-v2.pkl`` next to the runs.

For each backbone (GPT-2 DT, Qwen3 DT) and seed: pretrain offline with ``--policy stochastic``
(``--offline_iters`` x ``--offline_steps``), then fine-tune online from that checkpoint with
``--init_from`` until the online phase has used ``--cpu_minutes`` of CPU time (the run is
extended by ``--chunk`` rounds at a time with ``--resume``, since ``--online_rounds`` may grow on
resume). Both are evaluated on ``--episodes`` episodes conditioned on ``--target`` (the
exploration target is the ODT's 2x that).

The budget is CPU time, not wall time: each run is one process with one thread
(``OMP_NUM_THREADS=1``), ``--jobs`` runs go at once (default: one per core), and a run's budget
is the user+system time its processes used, so a machine shared with other work slows the
benchmark without changing what each run gets. 60 CPU-minutes is 30 minutes of both cores.

``--control`` adds a run that separates the online data from the extra training: the same
pretraining continued offline for at least as many gradient updates as the online phase took
(whole iterations of ``--offline_steps``), evaluated the same way. Its return is the table's
last column, for information (not a target).

Prints a markdown table (best return in the pretraining data, offline DT, fine-tuned DT, env
steps, online CPU minutes) and writes the learning curves over env steps with plot.py. The
target, per backbone and seed: the fine-tuned DT's mean evaluation return exceeds both the
offline DT's and the best return in its data; the script exits 1 naming each miss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GYM = ROOT / "gym"
sys.path.insert(0, str(GYM))

from decision_transformer.data.pickle_io import load_paths_file, save_paths  # noqa: E402

SCRIPTS = {"gpt2": "experiment.py", "qwen3": "experiment_qwen.py"}
FULL = {
    "model": {
        "gpt2": "--embed_dim 128 --n_layer 3 --n_head 4".split(),
        "qwen3": "--embed_dim 128 --n_layer 3 --n_head 4 --n_kv_head 2 --mlp_ratio 3.0".split(),
    },
    "collect_episodes": 1000,
    "offline_iters": 3,
    "offline_steps": 2000,
    "online_updates": 300,  # the ODT's
    "online_episodes": 4,
    "eval_every": 10,
    "chunk": 10,
}
SMOKE = {
    "model": {
        "gpt2": "--embed_dim 32 --n_layer 1 --n_head 1".split(),
        "qwen3": "--embed_dim 32 --n_layer 1 --n_head 2 --n_kv_head 1".split(),
    },
    "collect_episodes": 40,
    "offline_iters": 1,
    "offline_steps": 20,
    "online_updates": 5,
    "online_episodes": 2,
    "eval_every": 2,
    "chunk": 2,
}


def run(script: str, *args) -> float:
    """Run a gym script with one thread; returns the CPU seconds (user + system) it used."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [sys.executable, script, *map(str, args)], cwd=GYM, env=env, stdout=subprocess.DEVNULL
    ) as proc:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, [script, *map(str, args)])
    return usage.ru_utime + usage.ru_stime


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def make_dataset(data: Path, episodes: int, max_return: float) -> np.ndarray:
    """humanoid-low-v2.pkl: the collected recipe's episodes of return below max_return."""
    low = data / "humanoid-low-v2.pkl"
    if not low.exists():
        run("data/collect_dataset.py", "--env", "humanoid", "--out", data,
            "--episodes", episodes, "--overwrite")  # fmt: skip
        paths = load_paths_file(data / "humanoid-collected-v2.pkl")
        kept = [p for p in paths if float(p["rewards"].sum()) < max_return]
        if len(kept) < 2:
            raise SystemExit(f"only {len(kept)} episodes below return {max_return}")
        save_paths(kept, low)
    return np.array([float(p["rewards"].sum()) for p in load_paths_file(low)])


def eval_return(row: dict, target: float) -> float:
    return row[f"evaluation/target_{target:g}_return_mean"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models and budget: checks the script")
    p.add_argument("--backbones", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 (smoke: 0)")
    p.add_argument(
        "--cpu_minutes", type=float, default=None,
        help="online budget per run in CPU minutes (default 60: 30 minutes of 2 cores)",
    )  # fmt: skip
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    p.add_argument(
        "--control", action="store_true",
        help="also continue each pretraining offline for as many updates as its online phase "
        "took (the table's last column; not a target)",
    )  # fmt: skip
    p.add_argument("--max_return", type=float, default=1000.0, help="dataset return cap")
    p.add_argument("--target", type=float, default=5000.0, help="evaluation return-to-go")
    p.add_argument("--episodes", type=int, default=None, help="eval episodes (default 20)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "odt"))
    args = p.parse_args()
    c = SMOKE if args.smoke else FULL
    seeds = args.seeds or ([0] if args.smoke else [0, 1])
    cpu_minutes = args.cpu_minutes or (0.3 if args.smoke else 60.0)
    episodes = args.episodes or (2 if args.smoke else 20)
    out = Path(args.out).resolve() / ("smoke" if args.smoke else "full")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    returns = make_dataset(data, c["collect_episodes"], args.max_return)
    best = float(returns.max())
    print(f"dataset humanoid-low: {len(returns)} episodes, best return {best:.0f}", flush=True)

    common = [
        "--env", "humanoid", "--dataset", "low", "--data_dir", data, "--K", "5",
        "--batch_size", "64", "--learning_rate", "3e-4", "--warmup_steps", "200",
        "--device", "cpu", "--policy", "stochastic", "--env_targets", f"{args.target:g}",
        "--num_eval_episodes", episodes, "--eval_envs", min(episodes, 10),
        "--max_iters", c["offline_iters"], "--num_steps_per_iter", c["offline_steps"],
    ]  # fmt: skip
    online = [
        "--online_updates", c["online_updates"], "--online_episodes", c["online_episodes"],
        "--online_eval_every", c["eval_every"],
    ]  # fmt: skip

    def one(backbone: str, seed: int) -> tuple:
        """Pretrain, then fine-tune until the CPU budget is spent; the table's row."""
        script = SCRIPTS[backbone]
        flags = [*common, *c["model"][backbone], "--seed", seed]
        off, on = out / f"{backbone}-s{seed}-offline", out / f"{backbone}-s{seed}-online"
        if not (off / "checkpoint.pt").exists():
            run(script, *flags, "--out_dir", off)
        offline_return = eval_return(rows(off)[-1], args.target)
        # The CPU time the online phase has used so far, kept beside the run so that a rerun
        # continues it; the rounds done are the run's own (its metrics' last iteration).
        budget = out / f"{backbone}-s{seed}-online-budget.json"
        spent = json.loads(budget.read_text())["cpu_s"] if budget.exists() else 0.0
        rounds = rows(on)[-1]["iteration"] - c["offline_iters"] if budget.exists() else 0
        while spent < cpu_minutes * 60:  # extend the online phase chunk by chunk
            rounds += c["chunk"]
            resume = ["--resume"] if (on / "checkpoint.pt").exists() else []
            extend = ["--online_rounds", rounds, "--init_from", off / "checkpoint.pt"]
            spent += run(script, *flags, *online, *extend, "--out_dir", on, *resume)
            budget.write_text(json.dumps({"cpu_s": spent}))
        final = rows(on)[-1]
        control = None
        if args.control:
            # The same pretraining run, continued offline for at least the online phase's
            # gradient updates (whole iterations): what the extra updates alone are worth.
            updates = (final["iteration"] - c["offline_iters"]) * c["online_updates"]
            iters = c["offline_iters"] + -(-updates // c["offline_steps"])
            more = out / f"{backbone}-s{seed}-offline-more"
            if not (more / "checkpoint.pt").exists() or rows(more)[-1]["iteration"] < iters:
                resume = ["--resume"] if (more / "checkpoint.pt").exists() else []
                flags = [*flags, "--max_iters", iters]  # the last --max_iters wins
                run(script, *flags, "--out_dir", more, *resume)
            control = eval_return(rows(more)[-1], args.target)
        print(f"{backbone} seed {seed}: done", flush=True)
        return (backbone, seed, offline_return, eval_return(final, args.target),
                final["online/env_steps"], spent / 60, rounds, control)  # fmt: skip

    runs = [(backbone, seed) for backbone in args.backbones for seed in seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda r: one(*r), runs))
    online_dirs = [out / f"{backbone}-s{seed}-online" for backbone, seed in runs]

    print("\n| backbone | seed | best in data | offline DT | fine-tuned DT | env steps | rounds "
          "| online CPU min | > offline? | > data? | offline, as many updates |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    missed = []
    for backbone, seed, off_r, on_r, env_steps, spent, rounds, control in results:
        beats_off, beats_data = on_r > off_r, on_r > best
        print(
            f"| {backbone} | {seed} | {best:.0f} | {off_r:.0f} | {on_r:.0f} | {env_steps:,} | "
            f"{rounds} | {spent:.1f} | {'yes' if beats_off else 'no'} | "
            f"{'yes' if beats_data else 'no'} | {'-' if control is None else f'{control:.0f}'} |"
        )
        if not (beats_off and beats_data):
            missed.append(
                f"{backbone} seed {seed}: fine-tuned {on_r:.0f} vs offline {off_r:.0f} and best "
                f"data return {best:.0f}"
            )
    curves = out / "odt_curves.png"
    run("plot.py", *online_dirs, "--x", "env_steps", "--out", curves)
    print(f"\nlearning curves over env steps: {curves}")
    for m in missed:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
