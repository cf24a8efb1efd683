"""The Online Decision Transformer's objective (Zheng, Zhang and Grover, ICML 2022).

The policy minimises the negative log-likelihood of the data's actions subject to a lower bound
on its entropy, ``H >= target``; the bound enters through a Lagrange multiplier, the temperature
``lambda = exp(log_temperature) >= 0``, learned by dual descent:

    policy loss       NLL - lambda * H            (lambda held fixed)
    temperature loss  lambda * (H - target)       (H held fixed)

so lambda falls while the entropy is above its target and rises while it is below. Both are
means over the real (unpadded) steps of the batch. Everything returned is a tensor on the
device: nothing here waits for it (the trainer's one sync per step reads what it needs).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

# The ODT's initial temperature and the learning rate of its Adam on log-temperature (betas
# 0.9, 0.999): --init_temperature 0.1 in its main.py, torch.optim.Adam(lr=1e-4) there.
INIT_TEMPERATURE = 0.1
TEMPERATURE_LR = 1e-4


class LogTemperature(nn.Module):
    """The dual variable, kept as its log so the temperature stays positive. A module of its own
    (not part of the DT): it has its own optimizer, is never clipped with the model's gradients
    and never wrapped by DDP/FSDP; its state dict goes into the checkpoint beside the model's."""

    def __init__(self, init_temperature: float = INIT_TEMPERATURE):
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"the initial temperature must be positive, not {init_temperature}")
        self.log_value = nn.Parameter(torch.tensor(math.log(init_temperature)))

    def forward(self) -> torch.Tensor:
        return self.log_value.exp()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, K]`` over the steps where ``mask [B, K]`` is 1. ``where`` rather than a
    product, so a non-finite value on a padded step cannot leak in as NaN (0 * inf)."""
    real = mask > 0
    return torch.where(real, x, 0.0).sum() / real.sum()


def temperature_loss(
    temperature: torch.Tensor, entropy: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """``lambda * (H - target)`` with ``H`` detached: its gradient in log-lambda is
    ``lambda * (H - target)``, so a descent step lowers lambda while ``H`` is above target.
    Under torchrun pass the entropy averaged over ranks, so every rank's lambda stays equal."""
    return temperature * (entropy.detach() - target_entropy)


def odt_losses(
    dist,
    actions: torch.Tensor,
    mask: torch.Tensor,
    temperature: torch.Tensor,
    target_entropy: float,
    entropy_samples: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(policy loss, temperature loss, metrics) for one batch.

    ``dist``: the stochastic head's output over the batch's windows (``[B, K]`` positions);
    ``actions [B, K, A]`` the data's actions in env units; ``mask [B, K]`` 1 on real steps;
    ``temperature`` the current ``LogTemperature()`` (detached for the policy loss);
    ``target_entropy`` in the units of ``dist.entropy`` (see
    ``models/policy_heads.default_target_entropy``). The entropy is estimated from
    ``entropy_samples`` reparameterised draws per position (the ODT draws one) and averaged over
    real steps only, where the ODT's reference averages over padding too.

    Metrics, all detached 0-d tensors: ``nll``, ``entropy``, ``temperature``, ``policy_loss``,
    ``temperature_loss``.
    """
    nll = -masked_mean(dist.log_prob(actions), mask)
    entropy = masked_mean(dist.entropy(entropy_samples, generator=generator), mask)
    policy_loss = nll - temperature.detach() * entropy
    dual_loss = temperature_loss(temperature, entropy, target_entropy)
    metrics = {
        "nll": nll.detach(),
        "entropy": entropy.detach(),
        "temperature": temperature.detach(),
        "policy_loss": policy_loss.detach(),
        "temperature_loss": dual_loss.detach(),
    }
    return policy_loss, dual_loss, metrics
