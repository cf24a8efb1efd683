"""Training-step speed of the Qwen3 backbone, measured side by side in one run.

    python benchmarks/bench_qwen3.py            # full run (~15 minutes on 2 quiet cores)
    python benchmarks/bench_qwen3.py --quick    # small sizes, a smoke run

(a) forward+backward of ``Qwen3Transformer`` against transformers' ``Qwen3Model`` (sdpa) with the
same weights, fp32 and bf16 autocast, unpadded and left-padded batches, at each thread count.
(b) achieved FLOP/s of a forward+backward of the Qwen3-0.6B decoder (hidden 1024, 28 layers, 16/8
heads of 128, MLP 3072) on DT-sized batches (K=20 steps = 60 tokens), as a fraction of the matmul
peak measured in the same run. FLOPs are counted analytically: 6 x linear weights x tokens for the
projections, plus 12 x B x T^2 x heads x head_dim a layer for attention (both matmuls, fwd+bwd).
It runs with glibc's default allocator, then again with freed memory kept (see keep_freed_memory).

Targets (the script exits 1 with a ``MISSED:`` line for each case that misses one): ours at least
``SPEEDUP_TARGET`` x the reference in (a), and at least ``PEAK_FRACTION_TARGET`` of the matmul peak
in (b).

Timings are the best of ``--repeats`` after a warm-up, ours and the reference interleaved, so that
load from other processes on a shared machine inflates both alike and the minimum filters it out.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
import time
from pathlib import Path

import torch

SPEEDUP_TARGET = 1.1
PEAK_FRACTION_TARGET = 0.5

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gym"))

from decision_transformer.models.qwen3_transformer import (  # noqa: E402
    Qwen3Config,
    Qwen3Transformer,
)

QWEN3_06B = dict(
    embed_dim=1024, n_layer=28, n_head=16, n_kv_head=8, head_dim=128, intermediate_size=3072
)
# (name, config, batch size): DT-sized backbones and one layer-pair of Qwen3-0.6B.
COMPARE = [
    ("dt-256", dict(embed_dim=256, n_layer=4, n_head=8, n_kv_head=4, mlp_ratio=4.0), 64),
    ("dt-512", dict(embed_dim=512, n_layer=6, n_head=8, n_kv_head=2, mlp_ratio=4.0), 32),
    ("0.6b-2L", {**QWEN3_06B, "n_layer": 2}, 8),
]
T = 60  # K=20 timesteps x (return, state, action)


def best_times(fns, repeats: int) -> list[float]:
    """Best seconds of each of ``fns``, called in turn ``repeats`` times after one warm-up."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [min(ts) for ts in times]


def autocast(dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def left_padding(B: int, seed: int = 0) -> torch.Tensor:
    """A quarter of the rows left-padded by 3..T-3 tokens, as windows at episode starts are."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    for row in range(max(1, B // 4)):
        mask[row, : 3 * int(torch.randint(1, T // 3, (1,), generator=g))] = 0
    return mask


def train_step(model: torch.nn.Module, x: torch.Tensor, mask, dtype: torch.dtype):
    """One forward+backward of a loss on the model's hidden states; gradients start from None each
    time, as after ``zero_grad(set_to_none=True)`` in a training loop."""

    def step():
        model.zero_grad(set_to_none=True)
        x.grad = None
        with autocast(dtype):
            if isinstance(model, Qwen3Transformer):
                out = model(x, mask)
            else:
                out = model(inputs_embeds=x, attention_mask=mask).last_hidden_state
        out.float().square().mean().backward()

    return step


def compare(repeats: int, threads: list[int], quick: bool, missed: list[str]) -> None:
    import transformers

    print("## (a) forward+backward: ours vs transformers Qwen3Model (sdpa)\n")
    print("| config | B x T | threads | dtype | batch | ours ms | transformers ms | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for name, dims, B in COMPARE[:2] if quick else COMPARE:
        if quick:
            dims, B = {**dims, "n_layer": 2}, B // 2
        torch.manual_seed(0)
        cfg = Qwen3Config(**dims)
        ours = Qwen3Transformer(cfg).train()
        ref = transformers.Qwen3Model(
            transformers.Qwen3Config(
                vocab_size=16,
                hidden_size=cfg.embed_dim,
                num_hidden_layers=cfg.n_layer,
                num_attention_heads=cfg.n_head,
                num_key_value_heads=cfg.n_kv_head,
                head_dim=cfg.head_dim,
                intermediate_size=cfg.intermediate_size,
                rope_theta=cfg.rope_theta,
                rms_norm_eps=cfg.rms_norm_eps,
                attn_implementation="sdpa",
            )
        ).train()
        ref.load_state_dict(ours.state_dict(), strict=False)  # all but embed_tokens
        x = torch.randn(B, T, cfg.embed_dim, requires_grad=True)
        for n in threads:
            torch.set_num_threads(n)
            for dtype in (torch.float32, torch.bfloat16):
                for batch, mask in (("unpadded", None), ("left-padded", left_padding(B))):
                    t_ours, t_ref = best_times(
                        [train_step(ours, x, mask, dtype), train_step(ref, x, mask, dtype)],
                        repeats,
                    )
                    case = f"{name} {B} x {T} {n} threads {str(dtype)[6:]} {batch}"
                    print(
                        f"| {name} | {B} x {T} | {n} | {str(dtype)[6:]} | {batch} | "
                        f"{t_ours * 1e3:.1f} | {t_ref * 1e3:.1f} | {t_ref / t_ours:.2f}x |",
                        flush=True,
                    )
                    if t_ref / t_ours < SPEEDUP_TARGET:
                        missed.append(
                            f"{case}: {t_ref / t_ours:.2f}x transformers (target "
                            f">= {SPEEDUP_TARGET}x)"
                        )
    print()


def matmul_peak(dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    (seconds,) = best_times([lambda: a @ b], repeats)
    return 2 * n**3 / seconds


def train_flops(cfg: Qwen3Config, B: int) -> float:
    """Matmul FLOPs of one forward+backward over ``B`` windows of ``T`` tokens."""
    D, L = cfg.embed_dim, cfg.n_layer
    Dq, Dkv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    linear = L * (2 * D * Dq + 2 * D * Dkv + 3 * D * cfg.intermediate_size)
    attention = L * 12 * B * T * T * cfg.n_head * cfg.head_dim  # full T x T: masked, not skipped
    return 6 * linear * B * T + attention


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse instead of handing them back to the kernel.

    By default every block over the (at most 32 MiB) mmap threshold is unmapped when freed, so each
    training step of Qwen3-0.6B re-faults ~1.5 GiB of gradients, autocast weight copies and
    activations that the kernel must zero: 20-35% of the step in system time. Raising the mmap and
    trim thresholds (what M_MMAP_THRESHOLD_/M_TRIM_THRESHOLD_ or jemalloc/tcmalloc would do) lets
    the next step reuse them. Returns False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    )


def utilisation(repeats: int, threads: list[int], quick: bool, missed: list[str]) -> None:
    dims = {**QWEN3_06B, "n_layer": 2} if quick else QWEN3_06B
    cfg = Qwen3Config(**dims)
    torch.manual_seed(0)
    model = Qwen3Transformer(cfg).train()
    label = "Qwen3-0.6B" + (" (2 of its 28 layers)" if quick else "")
    print(f"## (b) {label}: forward+backward FLOP/s vs the matmul peak\n")
    print(
        f"{model.num_params():,} parameters; left-padded batches; gradients set to None each "
        "step.\n"
    )
    print(
        "| allocator | threads | dtype | B x T | step s | GFLOP | achieved GFLOP/s "
        "| matmul peak GFLOP/s | fraction |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    # Default glibc first: keep_freed_memory() can't be undone within the process.
    for allocator in ("glibc default", "freed memory kept"):
        if allocator != "glibc default" and not keep_freed_memory():
            break
        for n in threads:
            torch.set_num_threads(n)
            for dtype in (torch.bfloat16, torch.float32):
                for B in (4, 8):
                    x = torch.randn(B, T, cfg.embed_dim, requires_grad=True)
                    step = train_step(model, x, left_padding(B), dtype)
                    (seconds,) = best_times([step], repeats)
                    # Right after the step, so both see the same load from other processes.
                    peak = matmul_peak(dtype, 5)
                    flops = train_flops(cfg, B)
                    achieved = flops / seconds
                    print(
                        f"| {allocator} | {n} | {str(dtype)[6:]} | {B} x {T} | {seconds:.2f} | "
                        f"{flops / 1e9:.0f} | {achieved / 1e9:.0f} | {peak / 1e9:.0f} | "
                        f"{achieved / peak:.0%} |",
                        flush=True,
                    )
                    if achieved / peak < PEAK_FRACTION_TARGET:
                        missed.append(
                            f"{label} {allocator}, {n} threads, {str(dtype)[6:]}, B={B}: "
                            f"{achieved / peak:.0%} of the matmul peak (target "
                            f">= {PEAK_FRACTION_TARGET:.0%})"
                        )
    print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (best kept)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to run")
    args = p.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    # Other processes on a shared machine show here; the best-of timings mostly filter them out.
    print(f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} at start\n")
    missed: list[str] = []
    compare(repeats, args.threads, args.quick, missed)
    utilisation(max(2, repeats - 2), args.threads, args.quick, missed)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    for m in missed:
        print(f"MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
