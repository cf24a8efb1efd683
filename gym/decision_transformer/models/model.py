"""Base class shared by every policy: dimensions, action bounds, and context-window padding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class TrajectoryModel(nn.Module):
    """A policy over trajectory windows of at most ``max_length`` steps.

    ``forward`` takes batched windows ``[B, T, ...]``; ``get_action`` takes one episode's history
    ``[T, ...]`` (the original interface) and ``get_actions`` a batch of histories ``[N, T, ...]``
    that share one length, which is what the batched evaluator feeds.
    """

    def __init__(
        self,
        state_dim: int,
        act_dim: int,
        max_length: int | None = None,
        action_low: np.ndarray | float = -1.0,
        action_high: np.ndarray | float = 1.0,
    ):
        super().__init__()
        self.state_dim = state_dim
        self.act_dim = act_dim
        self.max_length = max_length
        low = torch.tensor(np.broadcast_to(action_low, (act_dim,)), dtype=torch.float32)
        high = torch.tensor(np.broadcast_to(action_high, (act_dim,)), dtype=torch.float32)
        # tanh lands in [-1, 1]; these map it onto the env's box (Humanoid's is [-0.4, 0.4]).
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def squash_action(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * self.action_scale + self.action_bias

    def get_actions(self, states, actions, rewards, returns_to_go, timesteps, **kwargs):
        raise NotImplementedError

    def get_action(self, states, actions, rewards, returns_to_go=None, timesteps=None, **kwargs):
        """One episode's history -> the action for its last step (the original signature)."""
        states = states.reshape(1, -1, self.state_dim)
        actions = actions.reshape(1, -1, self.act_dim)
        if returns_to_go is not None:
            returns_to_go = returns_to_go.reshape(1, -1, 1)
        if timesteps is not None:
            timesteps = timesteps.reshape(1, -1)
        return self.get_actions(states, actions, rewards, returns_to_go, timesteps, **kwargs)[0]

    def window(self, x: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
        """Keep the last ``max_length`` steps of ``x [N, T, ...]``, left-padded with zeros to
        exactly ``max_length``, as the original did at evaluation. Returns (window, pad size)."""
        if x is None or self.max_length is None:
            return x, 0
        x = x[:, -self.max_length :]
        pad = self.max_length - x.shape[1]
        if pad:
            x = torch.cat([x.new_zeros((x.shape[0], pad, *x.shape[2:])), x], dim=1)
        return x, pad
