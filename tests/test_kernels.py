"""The Qwen3 backbone's kernel-count choices: RMSNorm's two paths agree, norms output the compute
dtype under autocast, and the rotary tables are cast once a forward, not per layer."""

import collections

import torch
from decision_transformer.models.qwen3_transformer import (
    Qwen3Config,
    Qwen3Transformer,
    RMSNorm,
    rms_norm,
)
from torch.utils._python_dispatch import TorchDispatchMode


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_fused_and_hand_written_rms_norm_agree():
    """The CUDA path (F.rms_norm) and the CPU one (the autograd Function), values and grads."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, requires_grad=True)
    w = torch.randn(16).add_(1).requires_grad_()
    g = torch.randn(3, 5, 16)
    outs = []
    for fused in (True, False):
        y = rms_norm(x, w, 1e-6, torch.float32, fused=fused)
        dx, dw = torch.autograd.grad(y, (x, w), g)
        outs.append((y, dx, dw))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_norm_outputs_compute_dtype_under_autocast():
    norm = RMSNorm(16, 1e-6)
    x = torch.randn(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16  # the projections after it find nothing to cast
    assert norm(x).dtype == torch.float32
    # The same numbers as computing in fp32 and rounding once.
    torch.testing.assert_close(y, norm(x).to(torch.bfloat16), rtol=0, atol=0)


def test_rotary_tables_cast_once_per_forward():
    """Casts in a bf16 forward do not grow with depth beyond the layers' own weights and
    activations: 4 layers cost exactly twice the casts of 2 (no per-layer table casts)."""

    def casts(n_layer: int) -> int:
        cfg = Qwen3Config(embed_dim=32, n_layer=n_layer, n_head=4, n_kv_head=2)
        model = Qwen3Transformer(cfg)
        x = torch.randn(2, 6, 32)
        with torch.no_grad():
            model(x)  # builds the tables (float64 -> float32), once for the model's life
            # A fresh autocast region, whose cache of cast weights starts empty, as in training.
            with torch.autocast("cpu", dtype=torch.bfloat16), CountOps() as c:
                model(x)
        return c.ops["_to_copy"]

    two, four = casts(2), casts(4)
    per_layer = (four - two) // 2
    # Per layer: 7 weight casts, the two residual norms' outputs (their projections then cast
    # nothing: before, 5 input casts), the q/k norms' fp32 in and bf16 out (4), the attention
    # softmax's fp32 in and bf16 out (2). No rotary table casts (before, 4 a layer): those happen
    # outside the layers, once.
    assert per_layer == 7 + 2 + 4 + 2
    assert two - 2 * per_layer == 3  # two tables + the final norm's output
