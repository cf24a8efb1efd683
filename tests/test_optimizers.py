"""--optimizer lamb: the ODT's LAMB, checked against its update written out here step by step.

The reference below is the NVLAMB update of the ODT's reference code (facebookresearch/online-dt,
lamb.py) and of the LAMB paper (You et al., 2020, Algorithm 2 with Adam's bias correction), in
plain float64 arithmetic on lists of tensors, with nothing shared with training/optimizers.py.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from decision_transformer.training.optimizers import EPS, Lamb, build_optimizer


def reference_lamb(weights, grads_per_step, lr, wd, betas=(0.9, 0.999), eps=1e-8, clip=1.0):
    """Weights after one LAMB step per entry of ``grads_per_step`` (lists of tensors, None for
    a parameter without a gradient that step)."""
    w = [x.clone() for x in weights]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    b1, b2 = betas
    for t, grads in enumerate(grads_per_step, start=1):
        total = math.sqrt(sum(float((g**2).sum()) for g in grads if g is not None))
        shrink = total / clip if total > clip else 1.0
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g / shrink
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            r = m_hat / (v_hat.sqrt() + eps) + wd * w[i]
            if wd:
                wn, rn = float(w[i].norm()), float(r.norm())
                r = r * (wn / rn if wn > 0 and rn > 0 else 1.0)
            w[i] = w[i] - lr * r
    return w


def fixed_problem(seed=0):
    """Weights of several shapes, one of them all zeros (a fresh bias: trust ratio 1), and four
    steps of gradients: one step's global norm above 1 (the clip fires), a parameter that gets
    no gradient on one step, gradients of very different sizes across tensors."""
    g = torch.Generator().manual_seed(seed)
    weights = [
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64) * 10,
    ]
    steps = []
    for t in range(4):
        grads = [torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.05 for x in weights]
        if t == 1:
            grads[0] = grads[0] * 200  # global norm ~ 10: clipped
        if t == 2:
            grads[1] = None
        grads[2] = grads[2] * 1e-3
        steps.append(grads)
    return weights, steps


def run_lamb(weights, steps, lr, wd, opt=None, params=None):
    params = params or [torch.nn.Parameter(x.clone()) for x in weights]
    opt = opt or Lamb(params, lr=lr, weight_decay=wd)
    for grads in steps:
        for p, gr in zip(params, grads):
            p.grad = None if gr is None else gr.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("wd", [5e-4, 0.0])
def test_lamb_matches_the_reference_update(wd):
    weights, steps = fixed_problem()
    want = reference_lamb(weights, steps, lr=1e-2, wd=wd)
    got, _ = run_lamb(weights, steps, lr=1e-2, wd=wd)
    for p, w in zip(got, want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)
    # The trust ratio (wd > 0) makes a real difference here, so a LAMB that skipped it (or
    # an AdamW) would not pass: the steps above are not Adam's.
    adam = reference_lamb(weights, steps, lr=1e-2, wd=0.0)
    if wd:
        assert max(float((a - w).abs().max()) for a, w in zip(adam, want)) > 1e-3


def test_lamb_state_round_trips_exactly():
    """Two steps, state through torch.save / torch.load(weights_only=True) into a fresh
    optimizer over fresh copies of the weights, two more steps: the same as four at once."""
    weights, steps = fixed_problem(1)
    whole, _ = run_lamb(weights, steps, lr=1e-2, wd=5e-4)
    first, opt = run_lamb(weights, steps[:2], lr=1e-2, wd=5e-4)
    buf = io.BytesIO()
    torch.save({"w": [p.detach() for p in first], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    params = [torch.nn.Parameter(x.clone()) for x in saved["w"]]
    fresh = Lamb(params, lr=1e-2, weight_decay=5e-4)
    fresh.load_state_dict(saved["opt"])
    resumed, _ = run_lamb(None, steps[2:], lr=1e-2, wd=5e-4, opt=fresh, params=params)
    for a, b in zip(resumed, whole):
        assert torch.equal(a, b)


def test_lamb_refuses_adamw_state_and_build_optimizer_names():
    p = [torch.nn.Parameter(torch.ones(3))]
    adamw = build_optimizer("adamw", p, lr=1e-3, weight_decay=1e-4)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["eps"] == EPS == 1e-8
    p[0].grad = torch.ones(3)
    adamw.step()
    lamb = build_optimizer("lamb", p, lr=1e-3, weight_decay=5e-4)
    assert isinstance(lamb, Lamb) and lamb.defaults["eps"] == 1e-8
    with pytest.raises(ValueError, match="not LAMB's"):
        lamb.load_state_dict(adamw.state_dict())
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("sgd", p, lr=1e-3, weight_decay=0.0)
