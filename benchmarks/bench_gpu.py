"""The GPU training hot path: dispatched ops and host syncs per step (any machine), and with CUDA
step time, tokens/s, TFLOP/s, MFU, peak memory and syncs for both Humanoid presets.

    python benchmarks/bench_gpu.py                 # CPU counts; plus the CUDA table on a GPU
    python benchmarks/bench_gpu.py --skip_cuda     # CPU counts only
    python benchmarks/bench_gpu.py --steps 30      # more timed CUDA steps

CPU part, today's code beside the code before the hot-path work (``--baseline``, a git revision
extracted with ``git archive`` and run in a subprocess, so both are measured in one run):

* aten ops per forward+backward (DT forward under bf16 autocast, the trainer's loss, backward) of
  a Qwen3 DT with a 2-layer slice of the ``qwen3-0.6b`` backbone (hidden 1024, 16/8 heads of 128,
  SwiGLU 3072), dropout 0.1, a left-padded batch. Every dispatched op is counted (a
  TorchDispatchMode); "kernels" leaves out the ones that only make views. With ``--cpu_compiled``
  also the launches under regional compilation, what train_humanoid_qwen_dt.py runs by default
  on CUDA. Target: those launches <= 60% of the baseline's eager ops.
* host syncs per training step (``tests/host_syncs.py``: item/bool, tolist, cpu, nonzero,
  boolean-mask indexing, blocking or pageable host-to-device copies, the sampler running its CUDA
  path with the copies kept on the CPU), the optimizer's step left out. Target: <= 1.
* the step guard's cost per step (this tree only): weight-norm reads per step over a real
  iteration of GUARD_STEPS steps, counted, with the guard checking every step (as it did before)
  and at its default interval; the bytes that reads per step for each preset's fp32 weights; and
  CPU milliseconds per step (one read of the 2-layer slice timed, times the reads per step).
* host syncs per step of the Atari trainer (run_dt_atari.py's, GPT backbone, random frames),
  beside ATARI_BASELINE, the tree before its loss stayed on the device. Target: 0 (the progress
  bar reads the loss every PROGRESS_EVERY steps, a checkpoint and an epoch's log once).

CUDA part (only when ``torch.cuda.is_available()``; not run where this was written, which had no
GPU): each preset at batch 64, K 20 in bf16 autocast, eager and ``--compile``'s regional
compilation, the real SequenceTrainer step (real sampler with pinned copies, fused AdamW):
step time, tokens/s, achieved TFLOP/s (analytic matmul FLOPs, as in bench_qwen3.py), MFU against
the device's dense bf16 peak (table below, else a measured matmul peak), peak memory against
``--dry_run``'s estimate, host syncs per step from ``torch.cuda.set_sync_debug_mode``, CUDA
kernels per step from the profiler, and the guard's milliseconds per step (one weight-norm read of
the whole model timed, divided by the guard's interval). Target on an H100: >= 45% MFU compiled
for ``qwen3-0.6b``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "8c6f98a"  # main just before the hot-path branch
ATARI_BASELINE = "e7b50b3"  # main before the Atari trainer kept its loss on the device
QWEN3_06B_LAYER = dict(
    hidden_size=1024, n_head=16, n_kv_head=8, head_dim=128, intermediate_size=3072, dropout=0.1
)
S, A, K = 348, 17, 20  # Humanoid's state and action sizes, the presets' K
VIEW_OPS = {
    "view", "_unsafe_view", "t", "transpose", "unsqueeze", "expand", "slice", "as_strided",
    "detach", "select", "alias", "permute", "squeeze", "split", "unbind", "lift_fresh",
}  # fmt: skip
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets.
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def load_host_syncs():
    """tests/host_syncs.py of this tree as a stand-alone module (it needs torch only), so the
    baseline tree, which lacks it, is counted by the same counter."""
    path = ROOT / "tests/host_syncs.py"
    spec = importlib.util.spec_from_file_location("bench_host_syncs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def humanoid_dataset(episodes: int = 6, steps: int = 60):
    """A few short Humanoid episodes from the real simulator (random actions): the step's ops
    and syncs do not depend on what the data says, only that some windows are padded."""
    from decision_transformer.data.trajectories import TrajectoryDataset
    from decision_transformer.envs import make_env

    env = make_env("humanoid")
    rng = np.random.default_rng(0)
    paths = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        cols = {k: [] for k in ("observations", "actions", "rewards", "terminals")}
        for _ in range(steps):
            act = rng.uniform(-0.4, 0.4, A).astype(np.float32)
            nxt, rew, term, trunc, _ = env.step(act)
            for k, v in zip(cols, (obs, act, rew, term)):
                cols[k].append(v)
            obs = nxt
            if term or trunc:
                break
        paths.append({k: np.asarray(v, np.float32) for k, v in cols.items()})
        paths[-1]["terminals"] = paths[-1]["terminals"].astype(bool)
    env.close()
    return TrajectoryDataset.from_paths(paths)


MATMULS = {"mm", "bmm", "addmm", "baddbmm"}
GUARD_STEPS = 20  # optimizer steps in the iteration whose weight-norm reads are counted


def guard_cost(model: torch.nn.Module, make_dataset) -> dict | None:
    """The step guard's weight-norm reads per step, checking every step (the guard before) and
    at the trainer's default interval, over a real SequenceTrainer iteration of GUARD_STEPS
    steps; one read of ``model``'s weights timed; the presets' fp32 weight bytes. None for a tree
    whose guard has no interval (the baseline)."""
    from decision_transformer.training import trainer as trainer_module

    if not hasattr(trainer_module, "WEIGHT_CHECK_INTERVAL"):
        return None
    from decision_transformer.data.sampler import BatchSampler
    from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
    from decision_transformer.models.factory import ModelConfig, build_model, count_params
    from decision_transformer.training.seq_trainer import SequenceTrainer
    from train_humanoid_qwen_dt import PRESETS

    params = list(model.parameters())
    times = []
    for _ in range(7):
        start = time.perf_counter()
        trainer_module.weight_norm(params)
        times.append(time.perf_counter() - start)
    reads_per_step = {}
    real_norm = trainer_module.weight_norm
    for label, interval in (("before", 1), ("now", None)):
        torch.manual_seed(0)
        small = DecisionTransformerQwen3(
            S, A, 64, max_length=K, max_ep_len=1000, n_layer=2, n_head=4, n_kv_head=2
        )
        sampler = BatchSampler(make_dataset(), K, 1000, 1000.0, rng=np.random.default_rng(0))
        trainer = SequenceTrainer(
            small,
            torch.optim.AdamW(small.parameters(), lr=1e-4),
            get_batch=functools.partial(sampler, 4),
            options=trainer_module.TrainerOptions(progress=False, weight_check_interval=interval),
        )
        reads = []
        trainer_module.weight_norm = lambda p, reads=reads: reads.append(1) or real_norm(p)
        try:
            trainer.train_iteration(GUARD_STEPS)
        finally:
            trainer_module.weight_norm = real_norm
        reads_per_step[label] = len(reads) / GUARD_STEPS
    preset_bytes = {}
    for name, shape in PRESETS.items():
        with torch.device("meta"):
            cfg = ModelConfig(model_type="dt", backbone="qwen3", K=K, dropout=0.1, **shape)
            total, _ = count_params(build_model(cfg, S, A, 1000, -np.ones(A), np.ones(A)))
        preset_bytes[name] = 4 * total
    return {
        "read_ms": 1e3 * float(np.median(times)),
        "reads_per_step": reads_per_step,
        "interval": trainer_module.WEIGHT_CHECK_INTERVAL,
        "preset_bytes": preset_bytes,
    }


def count_tree(compiled: bool = False) -> dict:
    """Counts for the code on sys.path (this tree or the baseline's); run in a subprocess. With
    ``compiled``, also an estimate of the launches under regional compilation (see cpu_part)."""
    from decision_transformer.data.sampler import BatchSampler
    from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
    from decision_transformer.training import seq_trainer
    from decision_transformer.training import trainer as trainer_module
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.set_num_threads(1)
    host_syncs = load_host_syncs()
    B = 2
    g = torch.Generator().manual_seed(0)
    states, actions = torch.randn(B, K, S, generator=g), torch.rand(B, K, A, generator=g) - 0.5
    rtg, timesteps = torch.randn(B, K, 1, generator=g), torch.arange(K).repeat(B, 1)
    mask = torch.ones(B, K)
    mask[0, :7] = 0  # a window at an episode's end: left padding

    def loss_of(preds):
        if hasattr(seq_trainer, "masked_action_mse"):
            return seq_trainer.masked_action_mse(preds, actions, mask)
        real = mask.reshape(-1) > 0  # the baseline trainer's loss, as it was written
        return torch.mean((preds.float().reshape(-1, A)[real] - actions.reshape(-1, A)[real]) ** 2)

    def fwd_bwd(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, preds, _ = model(states, actions, None, rtg, timesteps, attention_mask=mask)
        loss_of(preds).backward()

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    def count(n_layer: int) -> tuple[list[str], torch.nn.Module]:
        torch.manual_seed(0)
        model = DecisionTransformerQwen3(
            S, A, max_length=K, max_ep_len=1000, n_layer=n_layer, **QWEN3_06B_LAYER
        ).train()
        fwd_bwd(model)  # warm-up: lazily built tables, first-call paths
        with Count() as c:
            fwd_bwd(model)
        return c.ops, model

    ops, model = count(2)
    kernels = [op for op in ops if op not in VIEW_OPS]
    result = {"ops": len(ops), "kernels": len(kernels)}
    guard = guard_cost(model, humanoid_dataset)
    if guard is not None:
        result["guard"] = guard
    if compiled:
        # A dispatch mode sends compiled code back to eager, so count what inductor generates
        # instead: its kernels for one block (forward and backward; every layer reuses them) plus
        # the block's matmuls, which stay library calls. Ops outside the blocks stay eager.
        import torch._inductor.metrics as metrics
        from decision_transformer.run.parallel import compile_regions

        one_layer, _ = count(1)
        per_block = len(ops) - len(one_layer)
        matmuls = sum(op in MATMULS for op in ops) - sum(op in MATMULS for op in one_layer)
        compile_regions(model)
        metrics.reset()
        fwd_bwd(model)
        block = metrics.generated_kernel_count + matmuls
        result["compiled"] = len(ops) - 2 * per_block + 2 * block
        result["compiled_detail"] = (
            f"{len(ops) - 2 * per_block} eager outside the blocks + 2 blocks x "
            f"({metrics.generated_kernel_count} inductor kernels + {matmuls} matmuls)"
        )

    # Host syncs of whole training steps, the sampler on its CUDA path (copies kept on the CPU).
    small = DecisionTransformerQwen3(
        S, A, 64, max_length=K, max_ep_len=1000, n_layer=2, n_head=4, n_kv_head=2, dropout=0.1
    )
    sampler = BatchSampler(
        humanoid_dataset(), K, 1000, 1000.0, device="cuda", rng=np.random.default_rng(0)
    )
    optimizer = torch.optim.AdamW(small.parameters(), lr=1e-4)
    options = dict(autocast_dtype=torch.bfloat16, progress=False)
    if hasattr(trainer_module, "TrainerOptions"):
        trainer = seq_trainer.SequenceTrainer(
            small,
            optimizer,
            get_batch=functools.partial(sampler, 8),
            options=trainer_module.TrainerOptions(**options),
        )
    else:  # the baseline's trainer: batch size, loss and options as arguments
        trainer = seq_trainer.SequenceTrainer(
            small, optimizer, 8, functools.partial(sampler, 8),
            lambda s_hat, a_hat, r_hat, s, a, r: torch.mean((a_hat - a) ** 2), **options,
        )  # fmt: skip
    step = optimizer.step
    syncs = []
    with host_syncs.HostSyncCounter(fake_cuda=True) as counter:

        def paused_step(*args, **kwargs):
            with counter.paused():
                return step(*args, **kwargs)

        optimizer.step = paused_step
        for _ in range(4):
            before = len(counter.events)
            trainer.train_step()
            syncs.append(counter.events[before:])
    return {**result, "syncs": syncs}


def count_atari_tree() -> dict:
    """Host syncs per step of the Atari trainer on sys.path (this tree or a baseline's), on random
    frames in the replay's layout (the counts do not depend on the pixels); run in a subprocess."""
    from types import SimpleNamespace

    from mingpt import trainer_atari
    from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig

    torch.set_num_threads(1)
    host_syncs = load_host_syncs()
    rng = np.random.default_rng(0)
    n, ctx, steps = 400, 10, 8
    ends = np.array([150, 280, n])
    data = SimpleNamespace(
        frames=rng.integers(0, 256, (n, 84, 84), dtype=np.uint8),
        actions=rng.integers(0, 4, n).astype(np.int64),
        rtgs=rng.random(n).astype(np.float32),
        timesteps=np.concatenate([np.arange(e - s) for s, e in zip([0, 150, 280], ends)]),
        starts=np.array([0, 150, 280]),
        ends=ends,
    )
    torch.manual_seed(0)
    cfg = AtariDTConfig(n_actions=4, max_timestep=n, context_length=ctx, n_layer=2, n_head=4,
                        n_embd=64)  # fmt: skip
    trainer = trainer_atari.Trainer(
        AtariDecisionTransformer(cfg),
        trainer_atari.WindowDataset(data, ctx),
        trainer_atari.TrainerConfig(batch_size=8, num_workers=0, steps_per_epoch=steps),
        torch.device("cpu"),
    )
    step = trainer.optimizer.step
    marks = []
    with host_syncs.HostSyncCounter() as counter:

        def paused_step(*args, **kwargs):  # AdamW's bookkeeping waits for nothing on CUDA
            with counter.paused():
                return step(*args, **kwargs)

        trainer.optimizer.step = paused_step
        trainer.run_epoch(lambda tr: marks.append(len(counter.events)))
    # Between two callbacks: one whole step (its batch fetched, trained, logged).
    syncs = [counter.events[a:b] for a, b in zip(marks, marks[1:])]
    return {"syncs": syncs}


def counts_of(rev: str | None, compiled: bool = False, atari: bool = False) -> dict | None:
    """count_tree() (count_atari_tree() with ``atari``) for git revision ``rev`` (None: this
    tree), in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = ROOT
        if rev is not None:
            paths = ["gym/decision_transformer"] + ["atari"] * atari
            try:
                archive = subprocess.run(
                    ["git", "-C", str(ROOT), "archive", rev, *paths],
                    capture_output=True,
                    check=True,
                ).stdout
            except (OSError, subprocess.CalledProcessError) as e:
                print(f"(baseline {rev} not available: {e}; its column stays empty)")
                return None
            tar_path = Path(tmp) / "tree.tar"
            tar_path.write_bytes(archive)
            with tarfile.open(tar_path) as tar:
                tar.extractall(tmp, filter="data")
            tree = Path(tmp)
        proc = subprocess.run(
            [sys.executable, __file__, "--_count_atari" if atari else "--_count", str(tree)]
            + ["--cpu_compiled"] * compiled,
            capture_output=True,
            text=True,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MUJOCO_GL": "egl"},
        )
        if proc.returncode:
            sys.exit(f"counting {rev or 'this tree'} failed:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_part(baseline: str, compiled: bool) -> list[str]:
    old, new = counts_of(baseline), counts_of(None, compiled)
    missed = []
    print("## CPU: one forward+backward and one training step\n")
    print("qwen3-0.6b layer shape, 2-layer slice, bf16 autocast, dropout 0.1, padded batch")
    print(f"(baseline: {baseline}; this tree: working copy)\n")
    print("| measure | baseline | now | ratio | target |")
    print("|---|---|---|---|---|")
    # The launch target is for what the GPU preset runs by default on CUDA: regional compilation
    # (train_humanoid_qwen_dt.py); eager (--compile false) is shown beside it.
    for key, label in (
        ("ops", "aten ops / fwd+bwd, eager"),
        ("kernels", "non-view ops / fwd+bwd, eager"),
    ):
        if old:
            print(f"| {label} | {old[key]} | {new[key]} | {new[key] / old[key]:.0%} | |")
        else:
            print(f"| {label} | (939 recorded) | {new[key]} | | |")
    if "compiled" in new:
        label = "launches / fwd+bwd, regional compile (est.; the GPU preset's default)"
        ratio = new["compiled"] / (old["ops"] if old else 939)
        print(f"| {label} | | {new['compiled']} | {ratio:.0%} | <= 60% |")
        if ratio > 0.6:
            missed.append(f"launches of the GPU preset's default at {ratio:.0%} of before (> 60%)")
    worst_old = max(len(s) for s in old["syncs"]) if old else "(11 recorded)"
    worst_new = max(len(s) for s in new["syncs"])
    print(f"| host syncs / step (max of 4) | {worst_old} | {worst_new} | | <= 1 |")
    print()
    if old:
        print(f"baseline's syncs in one step: {', '.join(old['syncs'][0])}")
    print(f"now: {', '.join(new['syncs'][0])}\n")
    if "compiled" in new:
        print(f"regional compile estimate: {new['compiled_detail']}\n")
    else:
        print("(the <= 60% launch target is counted on the GPU preset's default path, regional")
        print(" compilation: add --cpu_compiled to count it)\n")
    if "guard" in new:
        print_guard(new["guard"])
    if worst_new > 1:
        missed.append(f"{worst_new} host syncs in a training step (> 1)")
    missed += atari_part()
    return missed


def atari_part() -> list[str]:
    """Host syncs per step of the Atari trainer (run_dt_atari.py's), this tree beside the one
    before its loss stayed on the device."""
    old, new = counts_of(ATARI_BASELINE, atari=True), counts_of(None, atari=True)
    worst_old = max(len(s) for s in old["syncs"]) if old else "(not available)"
    worst_new = max(len(s) for s in new["syncs"])
    print("## CPU: the Atari trainer's steps\n")
    print(f"GPT backbone 64 x 2, batch 8, K 10, the optimizer's step left out ({ATARI_BASELINE}:")
    print("before; the progress bar reads the loss every PROGRESS_EVERY steps, not counted here)\n")
    print("| measure | before | now | target |")
    print("|---|---|---|---|")
    print(f"| host syncs / step (max of {len(new['syncs'])}) | {worst_old} | {worst_new} | 0 |")
    if old:
        print(f"\nbefore, one step: {', '.join(old['syncs'][0]) or 'none'}")
    print(f"now, one step: {', '.join(new['syncs'][0]) or 'none'}\n")
    return [f"{worst_new} host syncs in an Atari training step (> 0)"] if worst_new else []


def print_guard(g: dict) -> None:
    """The step guard's cost per step: checking every step (before) and every ``interval``."""
    before, now = g["reads_per_step"]["before"], g["reads_per_step"]["now"]
    print(
        f"step guard: the weight norm every step (before) and every {g['interval']} steps and "
        f"after each iteration (now), counted over a {GUARD_STEPS}-step iteration\n"
    )
    print("| guard cost per step | before | now | ratio |")
    print("|---|---|---|---|")
    print(f"| weight-norm reads / step | {before:.2f} | {now:.2f} | {now / before:.0%} |")
    for name, nbytes in g["preset_bytes"].items():
        print(
            f"| fp32 weights read / step, {name} | {before * nbytes / 1e9:.2f} GB "
            f"| {now * nbytes / 1e9:.2f} GB | |"
        )
    print(
        f"| CPU ms / step, 2-layer slice (one read {g['read_ms']:.1f} ms) "
        f"| {before * g['read_ms']:.1f} | {now * g['read_ms']:.1f} | |"
    )
    print()


# ---------------------------------------------------------------------------------------- CUDA


def device_peak_tflops(name: str) -> tuple[float, str]:
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_TFLOPS[key], "datasheet"
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12, "measured matmul"


def train_flops(cfg, B: int, T: int) -> float:
    """Matmul FLOPs of one forward+backward (as bench_qwen3.py): 6 x linear weights x tokens, plus
    12 x B x T^2 x heads x head_dim a layer for attention."""
    D, L = cfg.embed_dim, cfg.n_layer
    Dq, Dkv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    linear = L * (2 * D * Dq + 2 * D * Dkv + 3 * D * cfg.intermediate_size)
    return 6 * linear * B * T + L * 12 * B * T * T * cfg.n_head * cfg.head_dim


def cuda_run(
    preset: str, compiled: bool, steps: int, batch_size: int, device: str = "cuda", **overrides
) -> dict:
    """One configuration's numbers. ``device="cpu"`` with small ``overrides`` is a smoke run of
    this code on a machine without a GPU (--_smoke_cpu); its numbers mean nothing."""
    from decision_transformer.data.sampler import BatchSampler
    from decision_transformer.models.factory import ModelConfig, build_model, count_params
    from decision_transformer.models.memory import estimate_training_memory
    from decision_transformer.run.evaluation import enable_tf32
    from decision_transformer.run.parallel import compile_regions
    from decision_transformer.run.run import use_fused_adamw
    from decision_transformer.training.seq_trainer import SequenceTrainer
    from decision_transformer.training.trainer import TrainerOptions
    from train_humanoid_qwen_dt import PRESETS

    cfg = ModelConfig(
        **{"model_type": "dt", "backbone": "qwen3", "K": K, "dropout": 0.1},
        **{**PRESETS[preset], **overrides},
    )
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    enable_tf32(device)
    torch.manual_seed(0)
    model = build_model(cfg, S, A, 1000, -np.ones(A), np.ones(A)).to(device)
    total, backbone = count_params(model)
    estimate = estimate_training_memory(
        model.transformer.config, batch_size, 3 * K, torch.bfloat16, total - backbone
    )["total"]
    if compiled:
        compile_regions(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=use_fused_adamw(model))
    sampler = BatchSampler(humanoid_dataset(), K, 1000, 1000.0, device=device)
    trainer = SequenceTrainer(
        model,
        optimizer,
        functools.partial(sampler, batch_size),
        options=TrainerOptions(autocast_dtype=torch.bfloat16, progress=False),
    )
    model.train()
    for _ in range(3 if not compiled else 6):  # warm-up (and compiles: padded and unpadded)
        trainer.train_step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    # Syncs: every sync the CUDA runtime sees in one step, as warnings.
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train_step()
    if cuda:
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)

    # Kernels launched in one step (on CPU: the profiler's CPU ops, for the smoke run only).
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        trainer.train_step()
        sync()
    kind = "CUDA" if cuda else "CPU"
    kernels = sum(e.count for e in prof.key_averages() if e.device_type.name == kind)

    # The guard's weight-norm read of the whole model, taken every weight_check_interval steps.
    from decision_transformer.training.trainer import weight_norm

    params = list(model.parameters())
    weight_norm(params)
    sync()
    start = time.perf_counter()
    for _ in range(5):
        weight_norm(params)
    sync()
    guard_s = (time.perf_counter() - start) / 5 / getattr(trainer, "weight_check_interval", 1)

    sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    flops = train_flops(model.transformer.config, batch_size, 3 * K)
    out = {
        "step_s": seconds,
        "tokens_s": batch_size * 3 * K / seconds,
        "tflops": flops / seconds / 1e12,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "estimate_gib": estimate / 2**30,
        "syncs": syncs,
        "kernels": kernels,
        "guard_s": guard_s,
    }
    del trainer, optimizer, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def cuda_part(steps: int, batch_size: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "gym"))
    name = torch.cuda.get_device_name()
    peak, source = device_peak_tflops(name)
    print(f"## CUDA: {name}, bf16 peak {peak:.0f} TFLOP/s ({source}); batch {batch_size}, K {K}\n")
    print(
        "| preset | mode | step ms | tokens/s | TFLOP/s | MFU | peak GiB | est. GiB "
        "| syncs/step | CUDA kernels/step | guard ms/step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    missed = []
    for preset in ("qwen3-0.6b", "2048x24"):
        for compiled in (False, True):
            r = cuda_run(preset, compiled, steps, batch_size)
            mfu = r["tflops"] / peak
            mode = "compiled" if compiled else "eager"
            print(
                f"| {preset} | {mode} | {1e3 * r['step_s']:.1f} | {r['tokens_s']:,.0f} "
                f"| {r['tflops']:.1f} | {mfu:.0%} | {r['peak_gib']:.1f} | {r['estimate_gib']:.1f} "
                f"| {r['syncs']} | {r['kernels']} | {1e3 * r['guard_s']:.2f} |"
            )
            if r["syncs"] > 1:
                missed.append(f"{preset} {mode}: {r['syncs']} host syncs a step (> 1)")
            if preset == "qwen3-0.6b" and compiled and "H100" in name and mfu < 0.45:
                missed.append(f"qwen3-0.6b compiled bf16 at {mfu:.0%} MFU on {name} (< 45%)")
    print()
    return missed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' column")
    p.add_argument("--skip_cuda", action="store_true", help="only the CPU counts")
    p.add_argument("--steps", type=int, default=20, help="timed CUDA steps per configuration")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument(
        "--cpu_compiled",
        action="store_true",
        help="also estimate the launches under regional compilation on CPU (needs cc; ~3 min)",
    )
    p.add_argument("--_count", help=argparse.SUPPRESS)
    p.add_argument("--_count_atari", help=argparse.SUPPRESS)
    p.add_argument("--_smoke_cpu", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._smoke_cpu:  # the CUDA table's code, run small on the CPU to catch mistakes
        sys.path.insert(0, str(ROOT / "gym"))
        tiny = dict(embed_dim=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=16)
        for preset in ("qwen3-0.6b", "2048x24"):
            for compiled in (False, True):
                print(preset, compiled, cuda_run(preset, compiled, 2, 4, "cpu", **tiny))
        return 0
    if args._count:
        sys.path.insert(0, str(Path(args._count) / "gym"))
        print(json.dumps(count_tree(args.cpu_compiled)))
        return 0
    if args._count_atari:
        tree = Path(args._count_atari)
        sys.path[:0] = [str(tree / "gym"), str(tree / "atari")]
        print(json.dumps(count_atari_tree()))
        return 0
    missed = cpu_part(args.baseline, args.cpu_compiled)
    if torch.cuda.is_available() and not args.skip_cuda:
        missed += cuda_part(args.steps, args.batch_size)
    else:
        print("(no CUDA device: the GPU table needs one; run this script on a GPU machine)")
    for m in missed:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
