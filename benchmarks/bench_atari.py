"""Atari benchmarks: the DQN-Replay reader, and (with --quality) DT vs BC on a --collect replay.

    python benchmarks/bench_atari.py                  # reader: ~1 min
    python benchmarks/bench_atari.py --quality        # + Breakout: 3 trainings of 6,000 steps
    python benchmarks/bench_atari.py --quality --games Breakout Pong --seeds 123 231
                                                      # 2 games x 3 models x 2 seeds

Reader: one synthetic observation store of --rows frames (84x84 uint8, ~7 KB each decompressed)
is read twice, each in its own subprocess: whole (``np.load`` of the gzip stream, what dopamine
does) and streamed (``read_rows`` keeping --keep rows). Rows/s is rows decompressed per second;
peak is the growth of the process's max RSS. Targets: streamed peak <= 25% of the whole load's,
and streamed throughput >= 50% of it.

Quality, per game (Breakout, Pong): collect a replay with the game's scripted player
(create_dataset.py --collect), train DT (GPT), DT (Qwen3) and BC on it for --steps gradient steps
each per seed, evaluate each at three targets (the sample's median return, its best, and a higher
one). The budget is steps, not time, so a shared or slower machine changes how long the benchmark
takes but not what it measures; --jobs trainings go at once, each with cores / jobs threads (or
$OMP_NUM_THREADS if set), and a rerun skips finished trainings and resumes interrupted ones.
Targets, on the mean over seeds: the DT at the top target beats the dataset's median return and
BC, and DT returns rise with the target. Each seed's mean and the spread across seeds are
printed. Exit status 1 names every missed target.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ATARI = ROOT / "atari"


def write_store(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (16, 84, 84), dtype=np.uint8)
    block = np.concatenate([frames] * 125)  # 2000 rows of 16 distinct frames
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (rows, 84, 84)}
        )
        for start in range(0, rows, len(block)):
            f.write(block[: min(len(block), rows - start)].tobytes())


def measure(path: Path, mode: str, keep: int, rows: int) -> tuple[float, float]:
    """(rows/s, peak RSS growth in bytes) of one read, in a fresh process."""
    code = textwrap.dedent(f"""
        import gzip, resource, sys, time
        from pathlib import Path
        import numpy as np
        sys.path.insert(0, {str(ATARI)!r})
        import dqn_replay
        path = Path({str(path)!r})
        def hwm():  # peak RSS in KiB of this process image; ru_maxrss keeps the parent's
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        base = hwm()
        t = time.perf_counter()
        if {mode!r} == "whole":
            with gzip.open(path) as f:
                a = np.load(f, allow_pickle=False)
            kept = a[np.linspace(0, {rows} - 1, {keep}).astype(int)].copy()
        else:
            want = np.linspace(0, {rows} - 1, {keep}).astype(np.int64)
            kept = dqn_replay.read_rows(path, np.unique(want))
        dt = time.perf_counter() - t
        peak = hwm()
        print({rows} / dt, (peak - base) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rate, grew = out.stdout.split()
    return float(rate), float(grew)


def bench_reader(rows: int, keep: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "$store$_observation_ckpt.0.gz"
        t = time.time()
        write_store(path, rows)
        print(f"wrote {rows} rows ({rows * 84 * 84 / 2**20:.0f} MiB raw) in {time.time() - t:.0f}s")
        res = {m: measure(path, m, keep, rows) for m in ("whole", "streamed")}
    kept_mib = keep * 84 * 84 / 2**20
    print(f"\nreader: {rows} rows, keeping {keep} ({kept_mib:.1f} MiB)")
    print("| read | rows/s | peak RSS growth (MiB) |\n|---|---:|---:|")
    for m, (rate, grew) in res.items():
        print(f"| {m} | {rate:,.0f} | {grew / 2**20:.1f} |")
    missed = []
    (w_rate, w_peak), (s_rate, s_peak) = res["whole"], res["streamed"]
    if s_peak > 0.25 * w_peak:
        missed.append(f"streamed peak {s_peak / 2**20:.0f} MiB > 25% of whole {w_peak / 2**20:.0f}")
    if s_rate < 0.5 * w_rate:
        missed.append(f"streamed {s_rate:,.0f} rows/s < 50% of whole {w_rate:,.0f}")
    return missed


def run(script: str, *args) -> str:
    p = subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=ATARI, capture_output=True, text=True
    )
    if p.returncode:
        raise SystemExit(f"{script} failed:\n{p.stderr[-2000:]}")
    return p.stdout


# Per game: the collected replay, the sample trained on, the third target and the evaluation's
# step cap. Pong's episodes are long (800 to 5,000 steps), so its buffers are larger, a visit
# takes fewer of them, and its games are played to the end (ALE's cap, 27,000 steps): a game
# cut short has no final score. Breakout's cap stops an agent that never serves.
GAMES = {
    "Breakout": {"rows": 50_000, "num_steps": 80_000, "per_visit": 5,
                 "above": lambda top: 2 * top, "max_steps": 2000},
    "Pong": {"rows": 100_000, "num_steps": 120_000, "per_visit": 2,
             "above": lambda top: 21, "max_steps": None},
}  # fmt: skip

# The three models each game's quality part trains, and their flags beyond the common ones.
MODELS = {
    "DT gpt": ["--backbone", "gpt"],
    "DT qwen3": ["--backbone", "qwen3", "--n_kv_head", "2"],
    "BC": ["--model_type", "naive"],
}


def bench_quality(
    game: str,
    work: Path,
    steps: int,
    jobs: int,
    episodes: int,
    max_steps: int | None,
    seeds: list[int],
    rows: int | None = None,
    epochs: int = 1,
    models: list[str] | None = None,
) -> list[str]:
    sys.path.insert(0, str(ATARI))
    import create_dataset as cd
    import torch
    from decision_transformer.run.checkpoint import load_checkpoint
    from mingpt.evaluate_atari import evaluate
    from run_dt_atari import build_model

    spec = GAMES[game]
    rows = rows or spec["rows"]
    max_steps = max_steps or spec["max_steps"]
    # --replay_rows (a smoke test's small replay) samples half of what it collects.
    num_steps = spec["num_steps"] if rows == spec["rows"] else rows // 2
    cpu = torch.device("cpu")
    data_dir = work / "replay"
    if not (cd.replay_dir(str(data_dir), game) / "$store$_terminal_ckpt.49.gz").exists():
        t0 = time.time()
        print(run("create_dataset.py", "--collect", "--game", game, "--out", data_dir,
                  "--steps_per_buffer", rows, "--buffers", "2", "--seed", "0").strip())  # fmt: skip
        print(f"collected in {time.time() - t0:.0f}s")
    # Small enough for a CPU: on 2 shared cores one step of batch 32 x 30 steps took ~14 s
    # (960 frames through the conv encoder), so windows are 10 steps and batches 16.
    common = ["--game", game, "--data_dir_prefix", data_dir, "--num_buffers", "2",
              "--num_steps", num_steps, "--trajectories_per_buffer", spec["per_visit"],
              "--context_length", "10", "--batch_size", "16",
              "--n_layer", "3", "--n_head", "4", "--embed_dim", "128", "--eval_episodes", "0",
              "--epochs", epochs, "--steps_per_epoch", steps, "--save_every", "25",
              "--num_workers", "0", "--device", "cpu"]  # fmt: skip
    runs = {name: flags for name, flags in MODELS.items() if models is None or name in models}
    # Targets from the first seed's sample (every seed samples its own: the seed is the
    # sampling seed too, as in the original).
    ds = cd.create_dataset(2, num_steps, game, str(data_dir), spec["per_visit"], seeds[0],
                           log=lambda *_: 0)  # fmt: skip
    rets = ds.returns()
    median, top = float(np.median(rets)), float(rets.max())
    # What a model that ignores the frames can reach: the cross-entropy of the sample's action
    # frequencies (a final training loss near it means the frames taught the model nothing).
    freq = np.bincount(ds.actions.astype(np.int64).ravel()) / ds.actions.size
    prior_nats = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    targets = [median, top, float(spec["above"](top))]
    # A user's OMP_NUM_THREADS wins (e.g. 1 while another benchmark shares the machine).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))

    def train(name: str, seed: int) -> Path:
        """One training of --epochs passes (resumed if a checkpoint exists); its run folder."""
        out = work / f"{name.replace(' ', '_')}_s{seed}"
        if (out / "checkpoint.pt").exists():
            if load_checkpoint(out / "checkpoint.pt")["trainer"]["epoch"] >= epochs:
                return out
            resume = ["--resume"]
        else:
            resume = []
        args = [*map(str, common), *runs[name], "--seed", str(seed), "--out_dir", str(out)]
        p = subprocess.run(
            [sys.executable, "run_dt_atari.py", *args, *resume], cwd=ATARI, capture_output=True,
            text=True, env={**os.environ, "OMP_NUM_THREADS": threads},
        )  # fmt: skip
        if p.returncode:
            raise SystemExit(f"{name} seed {seed} failed:\n{p.stderr[-2000:]}")
        return out

    todo = [(name, seed) for name in runs for seed in seeds]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outs = dict(zip(todo, pool.map(lambda r: train(*r), todo)))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    results: dict[tuple[str, float], list[float]] = {}
    trained: dict[str, list[int]] = {}
    losses: dict[str, list[float]] = {}
    for name, seed in todo:
        state = load_checkpoint(outs[name, seed] / "checkpoint.pt")
        trained.setdefault(name, []).append(state["trainer"]["global_step"])
        last = (outs[name, seed] / "metrics.jsonl").read_text().splitlines()[-1]
        losses.setdefault(name, []).append(json.loads(last)["train/loss"])
        w = state["model"]
        model = build_model(state["config"], w["head.weight"].shape[0],
                            w["global_pos_emb"].shape[1] - 1)  # fmt: skip
        model.load_state_dict(w)
        for target in targets if name != "BC" else targets[:1]:
            r = evaluate(model, game, target, episodes, episodes, 1000, cpu, max_steps)
            results.setdefault((name, target), []).append(float(np.mean(r)))
    print(f"\nquality, {game}: dataset returns (clipped) median {median:.0f}, max {top:.0f}; "
          f"its actions' frequencies: cross-entropy {prior_nats:.2f} nats")  # fmt: skip
    print(f"| model | target | raw return, mean ± std over seeds ({episodes} episodes each) | "
          f"per seed | train steps | final train loss |\n|---|---:|---:|---|---:|---|")  # fmt: skip
    for (name, target), per_seed in results.items():
        spread = np.std(per_seed, ddof=1) if len(per_seed) > 1 else 0.0
        print(f"| {name} | {'–' if name == 'BC' else f'{target:.0f}'} | "
              f"{np.mean(per_seed):.1f} ± {spread:.1f} | "
              f"{' / '.join(f'{v:.1f}' for v in per_seed)} | "
              f"{' / '.join(f'{s:,}' for s in trained[name])} | "
              f"{' / '.join(f'{v:.2f}' for v in losses[name])} |")  # fmt: skip
    mean = {k: float(np.mean(v)) for k, v in results.items()}
    missed = []
    for name in ("DT gpt", "DT qwen3"):
        if name not in runs:
            missed.append(f"{game} {name}: not run (--models), so its targets are unchecked")
            continue
        best = mean[name, targets[1]]
        if best <= median:
            missed.append(f"{game} {name} at target {top:.0f} returns {best:.1f} <= median "
                          f"{median:.0f}")  # fmt: skip
        if "BC" not in runs:
            missed.append(f"{game} {name} vs BC: unchecked (BC not run, --models)")
        elif best <= mean["BC", targets[0]]:
            missed.append(f"{game} {name} at the top target ({best:.1f}) does not beat BC "
                          f"({mean['BC', targets[0]]:.1f})")  # fmt: skip
        if not mean[name, targets[0]] < mean[name, targets[1]]:
            missed.append(f"{game} {name} returns do not rise with the target")
    return missed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--keep", type=int, default=3_000)
    p.add_argument("--quality", action="store_true")
    p.add_argument("--work", default="runs/bench_atari")
    p.add_argument("--steps", type=int, default=6000, help="training budget: steps per model")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per target")
    p.add_argument(
        "--max_steps", type=int, default=None, help="evaluation step cap (Breakout 2000, Pong none)"
    )
    p.add_argument("--skip_reader", action="store_true")
    p.add_argument("--games", nargs="+", default=["Breakout"], choices=sorted(GAMES))
    p.add_argument("--seeds", type=int, nargs="+", default=[123], help="training seeds")
    p.add_argument("--replay_rows", type=int, default=None, help="rows per collected buffer")
    p.add_argument(
        "--epochs", type=int, default=1, help="passes over the sample, each capped at --steps"
    )
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS), help="default: all")
    args = p.parse_args()
    if args.epochs < 1:
        p.error(f"--epochs must be positive, got {args.epochs}")
    missed = [] if args.skip_reader else bench_reader(args.rows, args.keep)
    if args.quality:
        for game in args.games:
            # Breakout keeps the folder of the one-game runs; other games get their own.
            work = Path(args.work).resolve() / ("" if game == "Breakout" else game)
            work.mkdir(parents=True, exist_ok=True)
            missed += bench_quality(game, work, args.steps, args.jobs, args.episodes,
                                    args.max_steps, args.seeds, args.replay_rows,
                                    args.epochs, args.models)  # fmt: skip
    for m in missed:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
