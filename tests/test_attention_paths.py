"""Which attention kernel the Qwen3 backbone runs, and that its own grouped path matches SDPA.

On CPU under bf16 autocast or with dropout the backbone uses ``grouped_attention`` (two batched
matmuls, fp32 softmax) instead of ``scaled_dot_product_attention``; elsewhere SDPA. The README's
architecture table says so; these tests hold it to that, and check the grouped path's outputs
and gradients against SDPA in fp32 with dropout 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from decision_transformer.models import qwen3_transformer as qt

DIMS = dict(embed_dim=48, n_layer=2, n_head=6, n_kv_head=2, head_dim=20, intermediate_size=72)


def backbone(dropout=0.0):
    torch.manual_seed(0)
    return qt.Qwen3Transformer(qt.Qwen3Config(**DIMS, dropout=dropout))


@pytest.mark.parametrize(
    "dtype,dropout,train,grouped",
    [
        ("fp32", 0.0, True, False),  # SDPA
        ("fp32", 0.1, False, False),  # dropout off at evaluation: SDPA
        ("fp32", 0.1, True, True),  # training with dropout on CPU: grouped
        ("bf16", 0.0, False, True),  # bf16 on CPU: grouped
    ],
)
def test_cpu_dispatch(monkeypatch, dtype, dropout, train, grouped):
    calls = []
    real = qt.grouped_attention
    monkeypatch.setattr(qt, "grouped_attention", lambda *a: calls.append(1) or real(*a))
    model = backbone(dropout).train(train)
    x = torch.randn(2, 7, DIMS["embed_dim"])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        model(x, None)
    assert bool(calls) == grouped


def test_grouped_path_outputs_and_gradients_equal_sdpa():
    """The whole backbone through either kernel, fp32 and dropout 0, with left padding."""
    x = torch.randn(3, 11, DIMS["embed_dim"])
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :4] = 0
    results = {}
    for name in ("sdpa", "grouped"):
        model = backbone()
        xi = x.clone().requires_grad_()
        if name == "grouped":
            # Route every attention call through the grouped path, as bf16/dropout would.
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(
                    qt.F,
                    "scaled_dot_product_attention",
                    lambda q, k, v, attn_mask=None, dropout_p=0.0, **kw: qt.grouped_attention(
                        q, k, v, attn_mask, dropout_p
                    ),
                )
                out = model(xi, mask)
                out[mask.bool()].square().sum().backward()
        else:
            out = model(xi, mask)
            out[mask.bool()].square().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[name] = (out.detach(), xi.grad, grads)
    (o1, g1, p1), (o2, g2, p2) = results["sdpa"], results["grouped"]
    real = mask.bool()
    torch.testing.assert_close(o2[real], o1[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)
    for n in p1:
        torch.testing.assert_close(p2[n], p1[n], rtol=1e-4, atol=1e-5)
    assert F.scaled_dot_product_attention is torch.nn.functional.scaled_dot_product_attention


# --- the GPT-2 backbone -------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True])
def test_gpt2_runs_is_causal_without_padding(monkeypatch, padded):
    """A batch without padding (the sampler says so; the model gets None) reaches SDPA with no
    mask and ``is_causal``, the form CUDA's flash kernel takes; a padded batch keeps its mask.
    Both give what the explicit causal mask gave."""
    from decision_transformer.models import trajectory_gpt2 as gpt

    torch.manual_seed(0)
    model = gpt.TrajectoryGPT2(gpt.GPT2Config(n_embd=32, n_layer=2, n_head=4)).eval()
    x = torch.randn(3, 12, 32)
    mask = torch.ones(3, 12, dtype=torch.long)
    if padded:
        mask[1, :5] = 0
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((attn_mask is None, is_causal))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(gpt.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        out = model(x, mask if padded else None)
    assert calls == [(not padded, not padded)] * 2
    # The explicit boolean mask of before: causal, padded keys hidden, each query sees itself.
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    explicit = (causal & mask.bool()[:, None, None, :]) | torch.eye(12, dtype=torch.bool)
    monkeypatch.setattr(gpt, "causal_padding_mask", lambda *a: explicit)
    with torch.no_grad():
        want = model(x, mask)
    real_rows = mask.bool()
    torch.testing.assert_close(out[real_rows], want[real_rows], rtol=1e-6, atol=1e-6)


def test_gpt2_window_band_keeps_its_mask(monkeypatch):
    """Segments longer than the window need the banded mask, padding or not."""
    from decision_transformer.models import trajectory_gpt2 as gpt

    model = gpt.TrajectoryGPT2(gpt.GPT2Config(n_embd=32, n_layer=1, n_head=4, window=2)).eval()
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append(attn_mask is None or bool(kw.get("is_causal")))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(gpt.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(torch.randn(2, 12, 32), None)  # 4 timesteps under a 2-step window
    assert calls == [False]
