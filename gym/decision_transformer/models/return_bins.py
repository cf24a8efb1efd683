"""Binned returns-to-go: what the DT's return head predicts, and the return it then acts on.

Multi-Game Decision Transformers (Lee et al., 2022) train the model to predict the distribution
of the return-to-go from the history up to the state, and at acting time pick the return to
condition on by sampling that distribution re-weighted toward high returns ("expert return
inference"): ``P(R) * exp(kappa * (R - R_low) / (R_high - R_low))``. Here the returns are each
task's scaled returns-to-go (``rtg / scale``), cut into ``n`` equal bins over the range the
task's data covers (``range_ = (low, high)``, held by the model as the buffer ``return_range``);
a bin stands for its centre.
"""

from __future__ import annotations

import torch

# The evaluation target (``--env_targets auto``) that samples each step's return from the head.
AUTO_TARGET = "auto"
# Multi-Game DT's tilt toward high returns (its paper's kappa), the default of --return_kappa.
DEFAULT_KAPPA = 10.0


def bin_index(returns: torch.Tensor, range_: torch.Tensor, n: int) -> torch.Tensor:
    """The bin of each return (any shape, scaled units): ``floor((R - low) / width)``, returns
    outside the range in the end bins."""
    low, high = range_[0], range_[1]
    index = torch.floor((returns.float() - low) / (high - low) * n)
    return index.clamp_(0, n - 1).long()


def bin_centres(range_: torch.Tensor, n: int) -> torch.Tensor:
    """``[n]``: the return each bin stands for (its centre)."""
    low, high = range_[0], range_[1]
    return low + (torch.arange(n, device=range_.device, dtype=torch.float32) + 0.5) * (
        (high - low) / n
    )


def tilted_probs(logits: torch.Tensor, kappa: float) -> torch.Tensor:
    """``softmax(logits + kappa * c)`` over the last axis, ``c`` the bin's place in the range,
    0 for the first bin's centre ... 1 for the last's (``(R - R_low) / (R_high - R_low)`` with
    R_low, R_high the lowest and highest bin centres); in fp32."""
    n = logits.shape[-1]
    place = torch.linspace(0.0, 1.0, n, device=logits.device) if n > 1 else logits.new_zeros(1)
    return (logits.float() + kappa * place).softmax(-1)


def sample_returns(
    logits: torch.Tensor, range_: torch.Tensor, kappa: float, uniforms: torch.Tensor
) -> torch.Tensor:
    """Returns ``[N]`` (scaled) drawn from the tilted distributions of ``logits [N, n]`` by
    inverse transform sampling with ``uniforms [N]`` in [0, 1): each row's draw is a function of
    its own uniform, so an episode's returns do not depend on what it is batched with."""
    probs = tilted_probs(logits, kappa)
    cdf = probs.cumsum(-1)
    u = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]  # the sum is 1 up to rounding
    index = torch.searchsorted(cdf, u, right=True).clamp_(max=logits.shape[-1] - 1)[:, 0]
    return bin_centres(range_, logits.shape[-1])[index]
