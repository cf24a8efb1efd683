"""Several processes on this machine's CPU (gloo): per-step time and FSDP memory, not a test.

    python benchmarks/bench_distributed.py               # ~8 minutes on 2 quiet cores
    python benchmarks/bench_distributed.py --steps 10    # shorter
    python benchmarks/bench_distributed.py --memory_only # the memory table alone, ~3 minutes

Every row trains the same small Qwen3 DT (hidden 128, 4 layers, K 20) at the same global batch
through the real CLI (``torchrun`` for two processes), and reads the training time of its second
iteration from metrics.jsonl, so process start-up, data loading and the first (warm-up) iteration
are left out; each row is the best of ``--repeats`` interleaved runs. Rows: one process; two DDP
processes of one thread each (scaling efficiency = speed-up / 2, i.e. t1 / (2 x t2));
activation checkpointing (its recompute overhead); FSDP2 against DDP at the same size. Other jobs
sharing the cores inflate every row; compare ratios within one run.

The memory table: two FSDP processes (``torchrun``) hold a larger Qwen3 DT (hidden 512, 8 layers,
32.4M parameters, 123 MiB in fp32) and each samples its resident memory (RSS, every millisecond)
through two phases, measured from what it held before the phase: the evaluation after an
iteration (4 episodes, 2 per rank at once) played by the sharded model, against the way it was
done before (every rank gathering the full weights and loading them into a second full model);
and two accumulation micro-steps (forward and backward of 8 windows each), reduce-scattering every
micro-step, against turning gradient sync off on the inner one (FSDP2 then keeps unsharded fp32
gradients until the last).

Exit status 1 names a missed target: activation checkpointing over 1.8x the plain step, FSDP
over 3x DDP (on two CPU ranks its all-gathers and reduce-scatters are pure overhead), the sharded
evaluation's peak over half the full copy's, or accumulation's peak not below sync-off's.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "gym"))

from rollouts import write_dataset  # noqa: E402

MEMORY_MODEL = [
    "--embed_dim", "512", "--n_layer", "8", "--n_head", "8", "--n_kv_head", "4", "--K", "20",
    "--dropout", "0", "--device", "cpu", "--env", "humanoid",
]  # fmt: skip
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


class PeakRSS:
    """Peak resident memory of this process above its level at the phase's start, sampled every
    millisecond. (Run with a fixed MALLOC_MMAP_THRESHOLD_, so freed tensors leave RSS at once.)"""

    def __enter__(self):
        gc.collect()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.bytes = max(self.peak, self.rss()) - self.start


def memory_worker(out: Path) -> None:
    """One of two FSDP ranks: the memory table's four phases (see the module docstring)."""
    import numpy as np
    import torch
    from decision_transformer.models.factory import build_model
    from decision_transformer.run.config import build_parser, resolve
    from decision_transformer.run.distributed import DistContext
    from decision_transformer.run.evaluation import Evaluation
    from decision_transformer.run.parallel import FSDP
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    torch.set_num_threads(1)
    ctx = DistContext.from_env("cpu")
    flags = [*MEMORY_MODEL, "--num_eval_episodes", "4", "--eval_envs", "2"]
    cfg = resolve(build_parser(qwen=True).parse_args(flags), "qwen3")
    S, A = 348, 17  # Humanoid-v5 (gymnasium 1.x)

    def build():
        torch.manual_seed(0)
        return build_model(cfg.model_config(), S, A, 1000, -0.4, 0.4)

    parallel = FSDP(cfg, ctx)
    model = parallel.wrap(build())
    mean, std = np.zeros(S), np.ones(S)
    sharded = Evaluation(cfg, (mean, std), [3000.0], ctx, lockstep=True)
    model.eval()

    def sharded_evaluation() -> None:  # what the run does: the sharded model itself
        with parallel.evaluating(model):
            sharded(model)

    def full_copy() -> None:  # as before: the gathered full weights in a second full model
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        copy = build()
        copy.load_state_dict(full)
        Evaluation(cfg, (mean, std), [3000.0], ctx)(copy)

    result = {}
    # Each phase runs once unmeasured first: envs, kernels and caches are set up by then.
    for name, phase in (
        ("evaluation, sharded model", sharded_evaluation),
        ("evaluation, full copy (before)", full_copy),
    ):
        phase()
        with PeakRSS() as m:
            phase()
        result[name] = m.bytes

    model.train()
    g = torch.Generator().manual_seed(ctx.rank)
    batch = [torch.randn(8, cfg.K, S, generator=g), torch.randn(8, cfg.K, A, generator=g)]
    rtg, steps = torch.randn(8, cfg.K, 1, generator=g), torch.arange(cfg.K).expand(8, -1)

    def micro_step() -> None:
        _, pred, _ = model(batch[0], batch[1], None, rtg, steps)
        (pred - batch[1]).square().mean().backward()

    for name, toggle in (
        ("accumulation, reduce-scatter every micro-step", model.set_requires_gradient_sync),
        ("accumulation, sync off on the inner step (before)",
         lambda on: FSDPModule.set_requires_gradient_sync(model, on)),
    ):  # fmt: skip
        for measured in (False, True):
            with PeakRSS() if measured else contextlib.nullcontext() as m:
                toggle(False)
                micro_step()
                toggle(True)
                micro_step()
            model.zero_grad(set_to_none=True)
        result[name] = m.bytes
    result["parameters"] = sum(p.numel() for p in model.parameters())
    (out / f"memory{ctx.rank}.json").write_text(json.dumps(result))
    ctx.close()


def memory_rows(tmp: Path) -> dict[str, float]:
    """MiB per row, the larger of the two ranks'."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(Path(__file__).resolve()), "--memory_worker", str(tmp),
    ]  # fmt: skip
    # Allocations of 64 KiB and more are mapped and unmapped one by one (glibc would otherwise
    # raise that threshold and keep freed tensors in its heap, hiding them from RSS).
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "gym"),
        "MALLOC_MMAP_THRESHOLD_": "65536",
    }  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT / "gym", env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    ranks = [json.loads((tmp / f"memory{r}.json").read_text()) for r in range(2)]
    return {k: max(r[k] for r in ranks) / 2**20 for k in ranks[0]}


def print_memory(mib: dict[str, float]) -> list[str]:
    params = mib.pop("parameters") * 2**20
    print(
        f"\nFSDP memory, 2 processes, Qwen3 DT hidden 512 x 8 layers ({params / 1e6:.1f}M "
        f"parameters, {4 * params / 2**20:.0f} MiB in fp32): peak RSS above the phase's start\n"
    )
    print("| phase | MiB per process |")
    print("|---|---|")
    for name, v in mib.items():
        print(f"| {name} | {v:.0f} |")
    missed = []
    sharded, copy = mib["evaluation, sharded model"], mib["evaluation, full copy (before)"]
    if sharded > copy / 2:
        missed.append(f"sharded evaluation {sharded:.0f} MiB > half the full copy's {copy:.0f}")
    every = mib["accumulation, reduce-scatter every micro-step"]
    off = mib["accumulation, sync off on the inner step (before)"]
    if every >= off:
        missed.append(f"accumulation {every:.0f} MiB not below sync-off's {off:.0f}")
    return missed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per timed iteration")
    p.add_argument("--global_batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="runs of each row; the best counts")
    p.add_argument("--memory_only", action="store_true", help="only the FSDP memory table")
    p.add_argument("--memory_worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return 0
    if args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            missed = print_memory(memory_rows(Path(tmp)))
        if missed:
            print("missed: " + "; ".join(missed), file=sys.stderr)
        return 1 if missed else 0
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
        mib = memory_rows(tmp)
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
    missed = print_memory(mib)
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
