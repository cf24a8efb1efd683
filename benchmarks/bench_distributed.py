"""Several processes on this machine's CPU (gloo): per-step time side by side, not a test.

    python benchmarks/bench_distributed.py            # ~5 minutes on 2 quiet cores
    python benchmarks/bench_distributed.py --steps 10 # shorter

Every row trains the same small Qwen3 DT (hidden 128, 4 layers, K 20) at the same global batch
through the real CLI (``torchrun`` for two processes), and reads the training time of its second
iteration from metrics.jsonl, so process start-up, data loading and the first (warm-up) iteration
are left out; each row is the best of ``--repeats`` interleaved runs. Rows: one process; two DDP
processes of one thread each (scaling efficiency = speed-up / 2, i.e. t1 / (2 x t2));
activation checkpointing (its recompute overhead); FSDP2 against DDP at the same size. Other jobs
sharing the cores inflate every row; compare ratios within one run.

Exit status 1 names a missed target: activation checkpointing over 1.8x the plain step, or FSDP
over 3x DDP (on two CPU ranks its all-gathers and reduce-scatters are pure overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "gym"))

from rollouts import write_dataset  # noqa: E402

MODEL = [
    "--embed_dim", "128", "--n_layer", "4", "--n_head", "4", "--n_kv_head", "2",
    "--K", "20", "--dropout", "0", "--num_eval_episodes", "0", "--max_iters", "2",
    "--device", "cpu", "--env", "humanoid",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_ms(data: Path, out: Path, nproc: int, batch: int, steps: int, *extra: str) -> float:
    launch = (
        ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
         "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        if nproc > 1
        else []
    )  # fmt: skip
    cmd = [
        sys.executable, *launch, "experiment_qwen.py", *MODEL, "--data_dir", str(data),
        "--out_dir", str(out), "--batch_size", str(batch), "--num_steps_per_iter", str(steps),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT / "gym", env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return 1000 * rows[-1]["time/training"] / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per timed iteration")
    p.add_argument("--global_batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="runs of each row; the best counts")
    args = p.parse_args()
    G, S = args.global_batch, args.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp, "humanoid", "medium", episodes=12, seed=0)
        runs = {
            "1 process": (1, G),
            "2 processes, DDP": (2, G // 2),
            "1 process, activation checkpointing": (1, G, "--activation_checkpointing"),
            "2 processes, DDP, activation checkpointing": (
                2, G // 2, "--activation_checkpointing"
            ),
            "2 processes, FSDP": (2, G // 2, "--fsdp"),
        }  # fmt: skip
        # Rows interleaved, best of --repeats: load from other jobs inflates them alike.
        ms: dict[str, float] = {}
        for rep in range(args.repeats):
            for i, (name, (n, b, *extra)) in enumerate(runs.items()):
                t = step_ms(tmp, tmp / f"r{rep}-{i}", n, b, S, *extra)
                ms[name] = min(ms.get(name, t), t)
    base, ddp = ms["1 process"], ms["2 processes, DDP"]
    print(f"global batch {G}, Qwen3 DT hidden 128 x 4 layers, K 20, gloo on CPU, 1 thread each\n")
    print("| run | ms / optimizer step | vs 1 process | vs 2-process DDP |")
    print("|---|---|---|---|")
    for name, t in ms.items():
        print(f"| {name} | {t:.1f} | {t / base:.2f}x | {t / ddp:.2f}x |")
    print(f"\nscaling efficiency of 2 processes: {base / (2 * ddp):.0%} (1.0 = perfect)")
    ac = ms["1 process, activation checkpointing"] / base
    fsdp = ms["2 processes, FSDP"] / ddp
    print(f"activation checkpointing overhead: {ac:.2f}x; FSDP vs DDP: {fsdp:.2f}x")
    missed = []
    if ac > 1.8:
        missed.append(f"activation checkpointing {ac:.2f}x > 1.8x")
    if fsdp > 3.0:
        missed.append(f"FSDP {fsdp:.2f}x DDP > 3x")
    if missed:
        print("missed: " + "; ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
