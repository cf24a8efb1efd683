"""Action heads of the DT: what turns the state token's hidden state into an action.

Two heads with one interface, picked by a ``policy`` name (:func:`make_policy_head`):

* ``deterministic``: today's head, a linear layer then ``tanh`` scaled to the env's box, trained
  by the action MSE. It *is* an ``nn.Linear``, so its parameters keep the names ``weight`` and
  ``bias`` under the model's ``predict_action`` and every existing checkpoint loads as before.
* ``stochastic``: the Online Decision Transformer's (Zheng et al., 2022) squashed Gaussian: mean
  and log-std from the hidden state, a Gaussian sample pushed through ``tanh`` and scaled to the
  box, trained by the log-likelihood of the data's actions and an entropy constraint
  (``training/odt_loss.py``).

Calling a head, ``head(h [..., D], scale [A], bias [A])``, returns an action distribution with
``mean_action`` (what evaluation acts on), ``sample()``, ``log_prob(actions)`` and ``entropy()``.
The box (``scale = (high - low) / 2``, ``bias = (high + low) / 2``) is passed in rather than
stored: the model keeps it as its ``action_scale``/``action_bias`` buffers, one copy, under the
names checkpoints already hold.

Densities and entropies are of the action in the env's units (the tanh change of variables and
the box's scale both accounted for), as ``torch.distributions`` gives for
``TransformedDistribution(Normal, [TanhTransform, AffineTransform(bias, scale)])``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

POLICIES = ("deterministic", "stochastic")

# The ODT's bounds on the Gaussian's log-std (its reference code, DiagGaussianActor): the raw
# output goes through tanh and onto [-5, 2], a smooth clamp with a gradient everywhere.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
# Data actions on the box's edge (a saturated controller logs exactly +-high) have no preimage
# under tanh; their unit-box value is pulled this far inside before atanh. At 1 - 1e-6 atanh is
# 7.25, a finite log-likelihood; float32 resolves 1 - 1e-6 (its spacing near 1 is 6e-8).
ATANH_CLAMP = 1e-6
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def tanh_log_abs_det(u: torch.Tensor) -> torch.Tensor:
    """``log |d tanh(u) / du| = log(1 - tanh(u)^2)``, written as ``2 (log 2 - u - softplus(-2u))``
    so that it stays finite and accurate where tanh(u) rounds to +-1."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class PointMass:
    """The deterministic head's output: one action per position, no density."""

    stochastic = False

    def __init__(self, mean_action: torch.Tensor):
        self.mean_action = mean_action  # [..., A]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean_action

    def __getitem__(self, index) -> PointMass:
        """The distribution at some positions (e.g. ``[:, -1]``, the step being acted on)."""
        return PointMass(self.mean_action[index])

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            "a deterministic policy has no likelihood: train it with the action MSE "
            "(training/seq_trainer.masked_action_mse) or pick the stochastic head"
        )

    def entropy(self, num_samples: int = 1, generator: torch.Generator | None = None):
        raise TypeError("a deterministic policy has no entropy: pick the stochastic head")


class SquashedGaussian:
    """Independent Gaussians over the pre-squash action ``u [..., A]``, mapped to the env's box by
    ``a = tanh(u) * scale + bias``. ``log_prob`` and ``entropy`` sum over the action dimensions:
    they return ``[...]``."""

    stochastic = True

    def __init__(
        self, loc: torch.Tensor, log_std: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
    ):
        # At least fp32 (a bf16 autocast's head outputs are bf16): in bf16 the edge clamp would
        # round back onto +-1 (its spacing near 1 is 4e-3) and atanh would return inf.
        dtype = torch.promote_types(loc.dtype, torch.float32)
        self.loc = loc.to(dtype)  # [..., A]
        self.log_std = log_std.to(dtype)  # [..., A]
        self.scale = scale.to(dtype)  # [A]
        self.bias = bias.to(dtype)  # [A]

    @property
    def mean_action(self) -> torch.Tensor:
        """``tanh(loc)`` on the box, as the ODT evaluates: the squashed mode of the Gaussian, not
        the mean of the squashed distribution (which has no closed form)."""
        return torch.tanh(self.loc) * self.scale + self.bias

    def __getitem__(self, index) -> SquashedGaussian:
        """The distribution at some positions (e.g. ``[:, -1]``): sampling only those draws
        only their noise, so a cached and a recomputed rollout sample alike."""
        return SquashedGaussian(self.loc[index], self.log_std[index], self.scale, self.bias)

    def _squash(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(u) * self.scale + self.bias

    def _log_prob_pre(self, u: torch.Tensor) -> torch.Tensor:
        """Log-density of the action ``tanh(u) * scale + bias``, from its pre-squash value ``u``
        (no atanh round trip): Gaussian density of u less the log-Jacobian of the map."""
        z = (u - self.loc) * torch.exp(-self.log_std)
        gaussian = -0.5 * z.square() - self.log_std - _HALF_LOG_2PI
        return (gaussian - tanh_log_abs_det(u) - torch.log(self.scale)).sum(-1)

    def rsample(
        self, sample_shape: tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised draws: (actions, pre-squash values), each ``[*sample_shape, ..., A]``;
        gradients flow to ``loc`` and ``log_std``."""
        shape = (*sample_shape, *self.loc.shape)
        noise = torch.randn(
            shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype
        )
        u = self.loc + noise * torch.exp(self.log_std)
        return self._squash(u), u

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One action per position ``[..., A]`` (no gradient): what exploration plays."""
        with torch.no_grad():
            return self.rsample(generator=generator)[0]

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-density ``[...]`` of actions ``[..., A]`` in env units (e.g. the data's).

        Actions on or past the box's edge are taken ``ATANH_CLAMP`` inside it, so every action,
        the sampler's padding of -10 included, has a finite log-likelihood (the ODT's reference
        clamps the data's actions for the same reason)."""
        y = (actions.to(self.loc.dtype) - self.bias) / self.scale
        y = y.clamp(-1.0 + ATANH_CLAMP, 1.0 - ATANH_CLAMP)
        return self._log_prob_pre(torch.atanh(y))

    def entropy(
        self, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Monte-Carlo estimate ``[...]`` of the entropy, ``-mean log p(a)`` over ``num_samples``
        reparameterised draws (the squashed Gaussian has no closed form; the ODT uses one draw).
        Differentiable in ``loc`` and ``log_std``."""
        _, u = self.rsample((num_samples,), generator=generator)
        return -self._log_prob_pre(u).mean(0)


class DeterministicHead(nn.Linear):
    """Today's action head: ``Linear(hidden, act_dim)``, then ``tanh`` scaled to the box unless
    ``squash`` is False. Being the Linear itself keeps the state-dict names ``weight``/``bias``."""

    stochastic = False

    def __init__(self, hidden_size: int, act_dim: int, squash: bool = True):
        super().__init__(hidden_size, act_dim)
        self.squash = squash

    def forward(  # type: ignore[override]  (the box comes with the hidden state)
        self, h: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
    ) -> PointMass:
        x = super().forward(h)  # [..., A]
        return PointMass(torch.tanh(x) * scale + bias if self.squash else x)


class SquashedGaussianHead(nn.Module):
    """The ODT's stochastic head: ``mu`` and ``log_std`` linear maps of the hidden state, the
    log-std squeezed onto ``[log_std_min, log_std_max]`` by a tanh. Weights are orthogonal and
    biases zero, as the ODT initialises them."""

    stochastic = True

    def __init__(
        self,
        hidden_size: int,
        act_dim: int,
        log_std_min: float = LOG_STD_MIN,
        log_std_max: float = LOG_STD_MAX,
    ):
        super().__init__()
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min {log_std_min} must be below log_std_max {log_std_max}")
        self.mu = nn.Linear(hidden_size, act_dim)
        self.log_std = nn.Linear(hidden_size, act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        for layer in (self.mu, self.log_std):
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> SquashedGaussian:
        # The linears and everything after them in (at least) fp32, whatever autocast or the
        # weights' dtype: a bf16 loc is off by ~0.004-0.03 at |loc| 1-4, the size of the
        # smallest std (e^-5), so a confident policy's NLL would be mostly rounding noise.
        # Inputs and weights are upcast, not re-rounded: gradients still reach bf16 weights.
        dtype = torch.promote_types(h.dtype, torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            h = h.to(dtype)
            loc = _linear(self.mu, h, dtype)  # [..., A]
            # tanh lands in [-1, 1]; stretch it onto [min, max].
            unit = torch.tanh(_linear(self.log_std, h, dtype))
            log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (unit + 1.0)
        return SquashedGaussian(loc, log_std, scale, bias)


def _linear(layer: nn.Linear, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``layer(h)`` computed in ``dtype`` (the weights upcast for the call only)."""
    return F.linear(h, layer.weight.to(dtype), layer.bias.to(dtype))


def make_policy_head(
    policy: str, hidden_size: int, act_dim: int, squash: bool = True
) -> DeterministicHead | SquashedGaussianHead:
    """The head a ``policy`` name asks for. ``squash=False`` (an unsquashed linear output) exists
    for the deterministic head only: the Gaussian is defined by its squashing."""
    if policy == "deterministic":
        return DeterministicHead(hidden_size, act_dim, squash=squash)
    if policy == "stochastic":
        if not squash:
            raise ValueError("the stochastic head is always squashed (action_tanh must be True)")
        return SquashedGaussianHead(hidden_size, act_dim)
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")


def default_target_entropy(scale: torch.Tensor) -> float:
    """The ODT's target entropy, ``-act_dim``, for the action rescaled to the unit box
    ``[-1, 1]^A`` (the D4RL boxes the paper used), carried to the env's units: ``-A + sum(log
    scale)``. Equal to ``-act_dim`` on a ``[-1, 1]`` box; on Humanoid's ``[-0.4, 0.4]`` it asks
    for the same spread relative to the box rather than a 2.5x wider one."""
    return unit_box_entropy_to_env(-float(scale.numel()), scale)


def unit_box_entropy_to_env(entropy: float, scale: torch.Tensor) -> float:
    """An entropy of the action on the unit box, in env units: scaling by ``scale`` adds
    ``sum(log scale)`` (e.g. for a ``--target_entropy`` given per the paper's convention)."""
    return float(entropy + torch.log(scale.double()).sum())
