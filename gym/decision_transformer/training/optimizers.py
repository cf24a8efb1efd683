"""The optimizers a run can pick (``--optimizer``): AdamW (the default) or LAMB (the ODT's).

LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning") is an Adam step rescaled,
per parameter tensor, by a trust ratio ``||w|| / ||update||``. The Online Decision Transformer's
reference code trains with the NVLAMB variant (its ``lamb.py``, as in timm), and :class:`Lamb`
follows that variant's update exactly:

1. the global gradient norm over every parameter; above ``max_grad_norm`` (1.0) all gradients
   are divided by ``norm / max_grad_norm`` (with the trainer's clip at 0.25 this never fires,
   as in the reference, whose trainer clips at 0.25 too);
2. Adam's moments, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, both bias-corrected
   by a step count kept per parameter group;
3. ``update = m_hat / (sqrt(v_hat) + eps) + weight_decay * w`` (the decay is inside the update,
   so it is rescaled with it, unlike AdamW's decoupled decay);
4. with a non-zero weight decay, ``update *= ||w|| / ||update||`` when both norms are positive
   (else 1); without decay no rescaling (the reference's ``always_adapt=False``);
5. ``w -= lr * update``.

No library fit: timm's Lamb is this algorithm but timm needs torchvision, which pins torch to
its own version (``pip install timm`` here would replace torch 2.13 with another release and
its CUDA wheels); pytorch-optimizer's Lamb (as read) has no bias correction and clamps ``||w||``
at 10, another update; torch-optimizer has had no release since 2021. The test
(tests/test_optimizers.py) checks :class:`Lamb` against the steps above written out separately.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("adamw", "lamb")
# Adam's epsilon for both optimizers: torch's AdamW default and the ODT's LAMB (its main.py
# passes eps=1e-8; lamb.py's own default of 1e-6 is never used there).
EPS = 1e-8


class Lamb(torch.optim.Optimizer):
    """NVLAMB as the ODT's reference trains with it; see the module docstring for the update.
    Its state is ``exp_avg``/``exp_avg_sq`` per parameter and a ``step`` per parameter group, so
    ``state_dict()`` round-trips a run exactly."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = EPS,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
    ):
        if not lr > 0 or not eps > 0 or weight_decay < 0 or not max_grad_norm > 0:
            raise ValueError(
                f"Lamb needs lr, eps, max_grad_norm > 0 and weight_decay >= 0, got lr {lr}, "
                f"eps {eps}, max_grad_norm {max_grad_norm}, weight_decay {weight_decay}"
            )
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Lamb's betas must lie in [0, 1), got {betas}")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            max_grad_norm=max_grad_norm, step=0,
        )  # fmt: skip
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        """Refuse another optimizer's state (an AdamW checkpoint has no ``max_grad_norm`` in its
        groups): Adam moments without LAMB's step counts would resume a different run."""
        groups = state_dict.get("param_groups", [])
        if not all("max_grad_norm" in g and "step" in g for g in groups):
            raise ValueError("the optimizer state is not LAMB's (another --optimizer wrote it)")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return loss
        for grad in grads:
            if grad.is_sparse:
                raise RuntimeError("Lamb does not take sparse gradients")
        # One global clip over every group, as the reference (its first group's limit).
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        limit = self.param_groups[0]["max_grad_norm"]
        divisor = torch.clamp(norm / limit, min=1.0)  # 1 unless the norm is above the limit
        for group in self.param_groups:
            group["step"] += 1
            beta1, beta2 = group["betas"]
            correction1 = 1.0 - beta1 ** group["step"]
            correction2 = 1.0 - beta2 ** group["step"]
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad / divisor
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                update = (m / correction1) / ((v / correction2).sqrt() + group["eps"])
                if decay:
                    update.add_(p, alpha=decay)
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                    )
                    update.mul_(ratio)
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    params: Iterable,
    lr: float,
    weight_decay: float,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``--optimizer`` names over ``params``. ``fused`` is AdamW's kernel choice
    (None: torch's default); LAMB has no fused kernel."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=EPS, fused=fused)
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay, eps=EPS)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")
