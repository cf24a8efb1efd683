"""Does online fine-tuning (the Online Decision Transformer) take a DT past its data on Humanoid?

    python benchmarks/bench_odt.py                      # the full run: 6 x (pretrain + 80 rounds)
    python benchmarks/bench_odt.py --smoke              # a tiny end-to-end check of the script
    python benchmarks/bench_odt.py --control            # + offline runs given as many updates
    python benchmarks/bench_odt.py --recipe project reference   # + the ODT reference's recipe
    python benchmarks/bench_odt.py --recipe reference-full --device cuda   # its full size (GPU)

The dataset: the embedded ``humanoid-collected`` recipe (``gym/data/collect_dataset.py``, the
balance controller with rising action noise and knee bending, 1000 episodes) restricted to its
episodes of return below ``--max_return`` (default 1000: those that sink into a crouch and fall
within ~200 steps; standing for the whole episode is worth ~4940). Written as
``humanoid-low-v2.pkl`` next to the runs.

For each backbone (GPT-2 DT, Qwen3 DT) and seed: pretrain offline with ``--policy stochastic``
(3 x 2000 steps), then fine-tune online from that checkpoint with ``--init_from`` for
``--rounds`` rounds of 300 gradient updates each (the ODT's). Both are evaluated on
``--episodes`` episodes conditioned on ``--target`` (the exploration target is the ODT's 2x that).

The budget is in steps, not time: every arm takes the same offline steps and the same online
rounds (so the same online gradient updates), whatever the machine or its load, and a rerun of
the same command computes the same numbers. Each run is one process with one thread
(``OMP_NUM_THREADS=1``), ``--jobs`` runs go at once (default: one per core); the CPU minutes each
online phase used are reported beside its env steps, for information. A run interrupted at any
point continues from its last checkpoint when the command is run again (``--resume``), and a
larger ``--rounds`` extends finished runs. 80 rounds took ~33 CPU minutes per project run here.

``--control`` adds a run that separates the online data from the extra training: the same
pretraining continued offline for at least as many gradient updates as the online phase took
(whole iterations of ``--offline_steps``), evaluated the same way. Its return is the table's
last column, for information (not a target). ``--control project`` adds it to the named
recipes' arms only (a reference arm's control costs as much as its online phase again).

``--recipe reference`` adds an arm with the ODT reference's recipe as docs/reference.md lists it
(LAMB with weight decay 5e-4, lr 1e-4 warmed up over 10,000 steps then constant through the
online phase, dropout 0.1, K 20, no timestep embedding, acting on the last 5 steps, 300 updates
and 1 episode per round, a buffer of 1000), GPT-2 backbone only (the reference's), at the
project arm's model size and batch (128 wide x 3 layers, batch 64): the same dataset, targets,
steps, rounds and evaluation as the project's arm (``--recipe project``, the default), so the
two differ by the recipe's switches alone. ``--recipe reference-full`` is the reference at its
own size too (512 wide x 4 layers x 4 heads, batch 256): ~1.2 TFLOP per update (6 x 12.6M
weights x 15,360 tokens), over 12 s on one core of this machine even at its matmul peak, so
6,000 pretraining steps and 80 rounds of 300 updates are weeks of CPU: an arm for a GPU
(``--device cuda``). Their runs are named ``<recipe>-<backbone>-s<seed>-...``.

Seeds default to 0 1 2. Prints a markdown table per run (best return in the pretraining data,
offline DT, fine-tuned DT and the control, each as the evaluation's mean ± its standard deviation
over episodes, env steps, online CPU minutes), then one per recipe and backbone over the seeds:
mean ± standard deviation (over seeds, ddof 1) of the same final evaluations, the fine-tuned DT's
gain over the offline DT and over the control, and the mean episode spread of its evaluations.
It writes the learning curves over env steps with plot.py. The target, per recipe, backbone and
seed: the fine-tuned DT's mean evaluation return exceeds both the offline DT's and the best
return in its data; the script exits 1 naming each miss.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
RECIPES = ["project", "reference", "reference-full"]
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
    "rounds": 80,
}
# The ODT reference's recipe (docs/reference.md, "The reference's ODT recipe"): what replaces
# the project's flags, given after them (argparse keeps a flag's last value). "size" only in the
# reference-full arm.
REFERENCE = {
    "train": (
        "--optimizer lamb --weight_decay 5e-4 --learning_rate 1e-4 --warmup_steps 10000 "
        "--lr_decay none --online_warmup_steps 0 --K 20 --dropout 0.1 "
        "--no_timestep_embedding --eval_context 5"
    ).split(),
    "size": "--embed_dim 512 --n_layer 4 --n_head 4 --batch_size 256".split(),
    "online": "--online_updates 300 --online_episodes 1 --buffer_size 1000".split(),
}
# The smoke run keeps the recipe's switches at toy sizes.
REFERENCE_SMOKE = {
    "train": (
        "--optimizer lamb --weight_decay 5e-4 --learning_rate 1e-4 --warmup_steps 20 "
        "--lr_decay none --online_warmup_steps 0 --K 5 --dropout 0.1 "
        "--no_timestep_embedding --eval_context 2"
    ).split(),
    "size": "--embed_dim 32 --n_layer 1 --n_head 1 --batch_size 16".split(),
    "online": "--online_updates 5 --online_episodes 1 --buffer_size 1000".split(),
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
    "rounds": 4,
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


def logged(out: Path) -> int:
    """The last iteration ``out``'s metrics log holds (0: none). A phase is judged done by its
    log, not its checkpoint, so that a measurement committed without its weights (to carry it to
    another machine, benchmarks/README.md) is read, not retrained."""
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["iteration"] if lines else 0


def train(script: str, flags: list, out: Path) -> float:
    """Run (or resume, when ``out`` holds a checkpoint) one phase; CPU seconds. A log without
    its checkpoint is a carried-over phase that did not finish: it starts afresh (the script
    truncates the log)."""
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    return run(script, *flags, "--out_dir", out, *resume)


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


def eval_return(row: dict, target: float) -> tuple[float, float]:
    """The evaluation's mean return at ``target`` and its standard deviation over episodes."""
    key = f"evaluation/target_{target:g}_return"
    return row[f"{key}_mean"], row[f"{key}_std"]


def spread(values: list[float]) -> str:
    """``mean ± std`` over seeds (ddof 1); a single seed has no spread to state."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return f"{v.mean():.0f} (one seed)"
    return f"{v.mean():.0f} ± {v.std(ddof=1):.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models and budget: checks the script")
    p.add_argument("--backbones", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (smoke: 0)")
    p.add_argument(
        "--recipe", nargs="+", default=["project"], choices=RECIPES,
        help="project: this project's flags (below); reference: the ODT reference's recipe "
        "(docs/reference.md) at the project's model size and batch; reference-full: at its own "
        "size too (a GPU's arm). GPT-2 only for both references. Default: project",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=int, default=None,
        help="online rounds per run, 300 gradient updates each (default 80; smoke 4)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="the runs' --device (default cpu)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    p.add_argument(
        "--control", nargs="*", choices=RECIPES, default=None, metavar="RECIPE",
        help="also continue each pretraining offline for as many updates as its online phase "
        "took (the table's last column; not a target): for every --recipe, or only the ones "
        "named (e.g. --control project)",
    )  # fmt: skip
    p.add_argument("--max_return", type=float, default=1000.0, help="dataset return cap")
    p.add_argument("--target", type=float, default=5000.0, help="evaluation return-to-go")
    p.add_argument("--episodes", type=int, default=None, help="eval episodes (default 20)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "odt"))
    args = p.parse_args()
    if set(args.recipe) - {"project"} and "gpt2" not in args.backbones:
        p.error("--recipe reference runs the GPT-2 backbone: add gpt2 to --backbones")
    if args.control and set(args.control) - set(args.recipe):
        extra = " ".join(sorted(set(args.control) - set(args.recipe)))
        p.error(f"--control {extra}: not a --recipe of this run; add it to --recipe")
    # --control alone: every recipe's arms.
    controlled = set() if args.control is None else set(args.control or args.recipe)
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be positive, got {args.rounds}")
    c = SMOKE if args.smoke else FULL
    ref = REFERENCE_SMOKE if args.smoke else REFERENCE
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    budget_rounds = args.rounds or c["rounds"]
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
        "--device", args.device, "--policy", "stochastic", "--env_targets", f"{args.target:g}",
        "--num_eval_episodes", episodes, "--eval_envs", min(episodes, 10),
        "--max_iters", c["offline_iters"], "--num_steps_per_iter", c["offline_steps"],
    ]  # fmt: skip
    online = [
        "--online_updates", c["online_updates"], "--online_episodes", c["online_episodes"],
        "--online_eval_every", c["eval_every"],
    ]  # fmt: skip

    def one(recipe: str, backbone: str, seed: int) -> tuple:
        """Pretrain, then fine-tune for the budget's rounds; the table's row."""
        script = SCRIPTS[backbone]
        flags = [*common, *c["model"][backbone], "--seed", seed]
        online_flags = online
        if recipe != "project":
            flags = [*flags, *ref["train"], *(ref["size"] if recipe == "reference-full" else [])]
            online_flags = [*online, *ref["online"]]
        # The flag's last value, the one the run takes.
        at = len(online_flags) - 1 - online_flags[::-1].index("--online_updates")
        updates_per_round = int(online_flags[at + 1])
        name = f"{backbone}-s{seed}" if recipe == "project" else f"{recipe}-{backbone}-s{seed}"
        off, on = out / f"{name}-offline", out / f"{name}-online"
        # New, interrupted, or extended by a larger --rounds:
        online_left = logged(on) - c["offline_iters"] < budget_rounds
        # The online phase starts from the pretraining's checkpoint: a carried-over pretraining
        # whose weights stayed behind is trained again (the same seed, the same numbers).
        pretrained = off / "checkpoint.pt"
        if logged(off) < c["offline_iters"] or (online_left and not pretrained.exists()):
            train(script, flags, off)
        offline_return = eval_return(rows(off)[-1], args.target)
        # The CPU time the online phase used (for the table only), kept beside the run so that
        # an interrupted or extended run adds to it.
        cpu = out / f"{name}-online-cpu.json"
        spent = json.loads(cpu.read_text())["cpu_s"] if cpu.exists() else 0.0
        if online_left:
            if not (on / "checkpoint.pt").exists():
                spent = 0.0  # the phase starts afresh
            extend = ["--online_rounds", budget_rounds, "--init_from", pretrained]
            spent += train(script, [*flags, *online_flags, *extend], on)
            cpu.write_text(json.dumps({"cpu_s": spent}))
        final = next(r for r in rows(on) if r["iteration"] == c["offline_iters"] + budget_rounds)
        if f"evaluation/target_{args.target:g}_return_mean" not in final:
            raise SystemExit(f"{on}: round {budget_rounds} was not evaluated (it ran on past it)")
        rounds = budget_rounds
        control = None
        if recipe in controlled:
            # The same pretraining run, continued offline for at least the online phase's
            # gradient updates (whole iterations): what the extra updates alone are worth.
            updates = (final["iteration"] - c["offline_iters"]) * updates_per_round
            iters = c["offline_iters"] + -(-updates // c["offline_steps"])
            more = out / f"{name}-offline-more"
            if logged(more) < iters:
                if not (more / "checkpoint.pt").exists() and pretrained.exists():
                    # Continued from the pretraining's checkpoint (lr constant after warmup in
                    # both recipes, resume exact), it is the run from scratch minus its first
                    # iterations' compute; without those weights it trains from scratch.
                    more.mkdir(exist_ok=True)
                    for f in ("checkpoint.pt", "metrics.jsonl", "config.json"):
                        shutil.copy2(off / f, more / f)
                train(script, [*flags, "--max_iters", iters], more)  # the last --max_iters wins
            control = eval_return(rows(more)[-1], args.target)
        print(f"{recipe} {backbone} seed {seed}: done", flush=True)
        return (recipe, backbone, seed, offline_return, eval_return(final, args.target),
                final["online/env_steps"], spent / 60, rounds, control, on)  # fmt: skip

    runs = [
        (recipe, backbone, seed)
        for recipe in args.recipe
        for backbone in args.backbones
        if recipe == "project" or backbone == "gpt2"
        for seed in seeds
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda r: one(*r), runs))

    def pm(r: tuple[float, float] | None) -> str:
        return "-" if r is None else f"{r[0]:.0f} ± {r[1]:.0f}"

    print("\nPer run: the final evaluation's mean return ± its standard deviation over episodes.")
    print("\n| recipe | backbone | seed | best in data | offline DT | fine-tuned DT "
          "| env steps | rounds | online CPU min | > offline? | > data? "
          "| offline, as many updates |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    missed = []
    for recipe, backbone, seed, off_r, on_r, env_steps, spent, rounds, control, _ in results:
        beats_off, beats_data = on_r[0] > off_r[0], on_r[0] > best
        print(
            f"| {recipe} | {backbone} | {seed} | {best:.0f} | {pm(off_r)} | {pm(on_r)} | "
            f"{env_steps:,} | {rounds} | {spent:.1f} | {'yes' if beats_off else 'no'} | "
            f"{'yes' if beats_data else 'no'} | {pm(control)} |"
        )
        if not (beats_off and beats_data):
            missed.append(
                f"{recipe} {backbone} seed {seed}: fine-tuned {on_r[0]:.0f} vs offline "
                f"{off_r[0]:.0f} and best data return {best:.0f}"
            )

    print(
        "\nOver seeds: mean ± standard deviation (ddof 1) of the final evaluations' means; "
        "episode spread: the mean over seeds of the fine-tuned DT's standard deviation over "
        "episodes."
    )
    print("\n| recipe | backbone | seeds | offline DT | fine-tuned DT | fine-tuned - offline "
          "| offline, as many updates | fine-tuned - that | episode spread |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for recipe in args.recipe:
        for backbone in args.backbones:
            group = [r for r in results if r[0] == recipe and r[1] == backbone]
            if not group:
                continue
            off = [r[3][0] for r in group]
            fine = [r[4][0] for r in group]
            controls = [r[8][0] for r in group if r[8] is not None]
            gain_control = spread([f - k for f, k in zip(fine, controls)]) if controls else "-"
            print(
                f"| {recipe} | {backbone} | {len(group)} | {spread(off)} | {spread(fine)} | "
                f"{spread([f - o for f, o in zip(fine, off)])} | "
                f"{spread(controls) if controls else '-'} | {gain_control} | "
                f"{np.mean([r[4][1] for r in group]):.0f} |"
            )
    curves = out / "odt_curves.png"
    run("plot.py", *[r[-1] for r in results], "--x", "env_steps", "--out", curves)
    print(f"\nlearning curves over env steps: {curves}")
    for m in missed:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
