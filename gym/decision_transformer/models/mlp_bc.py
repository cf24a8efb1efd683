"""Behaviour cloning: an MLP from the last ``max_length`` states to the next action."""

from __future__ import annotations

import torch
import torch.nn as nn

from .model import TrajectoryModel


class MLPBCModel(TrajectoryModel):
    def __init__(
        self,
        state_dim: int,
        act_dim: int,
        hidden_size: int,
        n_layer: int,
        dropout: float = 0.1,
        max_length: int = 1,
        action_low=-1.0,
        action_high=1.0,
        **kwargs,
    ):
        super().__init__(state_dim, act_dim, max_length, action_low, action_high)
        layers: list[nn.Module] = [nn.Linear(max_length * state_dim, hidden_size)]
        for _ in range(n_layer - 1):
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, hidden_size)]
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, act_dim)]
        self.model = nn.Sequential(*layers)

    def forward(self, states, actions, rewards, attention_mask=None, target_return=None):
        # Only the last max_length states are used; the window is already left-padded.
        states = states[:, -self.max_length :].reshape(states.shape[0], -1)
        actions = self.squash_action(self.model(states))
        return None, actions.reshape(states.shape[0], 1, self.act_dim), None

    @torch.no_grad()
    def get_actions(self, states, actions, rewards, returns_to_go=None, timesteps=None, **kwargs):
        states, _ = self.window(states)
        _, actions, _ = self(states.float(), None, None, **kwargs)
        return actions[:, -1]
