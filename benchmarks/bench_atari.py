"""Atari benchmarks: the DQN-Replay reader, and (with --quality) DT vs BC on a --collect replay.

    python benchmarks/bench_atari.py                  # reader: ~1 min
    python benchmarks/bench_atari.py --quality        # + 3 trainings of <= 15 min each, 2 cores

Reader: one synthetic observation store of --rows frames (84x84 uint8, ~7 KB each decompressed)
is read twice, each in its own subprocess: whole (``np.load`` of the gzip stream, what dopamine
does) and streamed (``read_rows`` keeping --keep rows). Rows/s is rows decompressed per second;
peak is the growth of the process's max RSS. Targets: streamed peak <= 25% of the whole load's,
and streamed throughput >= 50% of it.

Quality: collect a Breakout replay with the built-in player, train DT (GPT), DT (Qwen3) and BC
on it, evaluate each at three targets. Targets: the DT at the top target beats the dataset's
median return and BC, and DT returns rise with the target. Exit status 1 names a missed target.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import textwrap
import time
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


def bench_quality(work: Path, minutes: float, episodes: int, max_steps: int) -> list[str]:
    sys.path.insert(0, str(ATARI))
    import create_dataset as cd
    import torch
    from decision_transformer.run.checkpoint import load_checkpoint
    from mingpt.evaluate_atari import evaluate
    from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig

    cpu = torch.device("cpu")
    data_dir = work / "replay"
    if not (cd.replay_dir(str(data_dir), "Breakout") / "$store$_terminal_ckpt.49.gz").exists():
        run("create_dataset.py", "--collect", "--out", data_dir, "--steps_per_buffer", "50000",
            "--buffers", "2", "--seed", "0")  # fmt: skip
    # Small enough for a CPU: on 2 shared cores one step of batch 32 x 30 steps took ~14 s
    # (960 frames through the conv encoder), so windows are 10 steps and batches 16.
    common = ["--data_dir_prefix", data_dir, "--num_buffers", "2", "--num_steps", "80000",
              "--trajectories_per_buffer", "5", "--context_length", "10", "--batch_size", "16",
              "--n_layer", "3", "--n_head", "4", "--embed_dim", "128", "--eval_episodes", "0",
              "--epochs", "5", "--steps_per_epoch", "1000000", "--save_every", "25",
              "--num_workers", "1", "--device", "cpu"]  # fmt: skip
    runs = {
        "DT gpt": ["--backbone", "gpt"],
        "DT qwen3": ["--backbone", "qwen3", "--n_kv_head", "2"],
        "BC": ["--model_type", "naive"],
    }
    ds = cd.create_dataset(2, 80000, "Breakout", str(data_dir), 5, 123, log=lambda *_: 0)
    rets = ds.returns()
    median, top = float(np.median(rets)), float(rets.max())
    targets = [median, top, 2 * top]
    table, results = [], {}
    for name, extra in runs.items():
        out = work / name.replace(" ", "_")
        if not (out / "checkpoint.pt").exists():
            # Train for the time budget, then stop: the last checkpoint (every 25 steps) is used.
            try:
                subprocess.run(
                    [sys.executable, "run_dt_atari.py", *map(str, common), *extra,
                     "--out_dir", str(out)],
                    cwd=ATARI, capture_output=True, timeout=minutes * 60,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                pass
            if not (out / "checkpoint.pt").exists():
                raise SystemExit(f"{name}: no checkpoint after {minutes} min; raise --minutes")
        state = load_checkpoint(out / "checkpoint.pt")
        steps = state["trainer"]["global_step"]
        c = state["config"]
        model = AtariDecisionTransformer(
            AtariDTConfig(
                n_actions=4,
                max_timestep=int(ds.timesteps.max()),
                context_length=c["context_length"],
                model_type=c["model_type"],
                backbone=c["backbone"],
                n_layer=c["n_layer"],
                n_head=c["n_head"],
                n_embd=c["embed_dim"],
                n_kv_head=c["n_kv_head"],
            )  # fmt: skip
        )
        model.load_state_dict(state["model"])
        for target in targets if name != "BC" else targets[:1]:
            # Capped (2,000 steps by default): an agent that never serves would play 27,000.
            r = evaluate(model, "Breakout", target, episodes, episodes, 1000, cpu, max_steps)
            results[name, target] = float(np.mean(r))
            table.append(f"| {name} | {target:.0f} | {np.mean(r):.1f} +- {np.std(r):.1f} | "
                         f"{steps} |")  # fmt: skip
    print(f"\nquality: dataset returns (clipped) median {median:.0f}, max {top:.0f}")
    print(
        f"| model | target | raw return ({episodes} episodes) | train steps |\n|---|---:|---:|---:|"
    )
    print("\n".join(table))
    missed = []
    for name in ("DT gpt", "DT qwen3"):
        best = results[name, targets[1]]
        if best <= median:
            missed.append(f"{name} at target {top:.0f} returns {best:.1f} <= median {median:.0f}")
        if best <= results["BC", targets[0]]:
            missed.append(f"{name} at the top target does not beat BC")
        if not results[name, targets[0]] < results[name, targets[1]]:
            missed.append(f"{name} returns do not rise with the target")
    return missed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--keep", type=int, default=3_000)
    p.add_argument("--quality", action="store_true")
    p.add_argument("--work", default="runs/bench_atari")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per target")
    p.add_argument("--max_steps", type=int, default=2000, help="evaluation step cap")
    p.add_argument("--skip_reader", action="store_true")
    args = p.parse_args()
    missed = [] if args.skip_reader else bench_reader(args.rows, args.keep)
    if args.quality:
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
        missed += bench_quality(work, args.minutes, args.episodes, args.max_steps)
    for m in missed:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
