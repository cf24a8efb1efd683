"""The Decision Transformer (Chen et al., 2021): returns-to-go, states, actions as one sequence."""

from __future__ import annotations

import torch
import torch.nn as nn

from .model import TrajectoryModel
from .trajectory_gpt2 import GPT2Config, TrajectoryGPT2


class DecisionTransformer(TrajectoryModel):
    """Models ``(R_1, s_1, a_1, R_2, s_2, a_2, ...)``; predicts ``a_t`` from the token of ``s_t``.

    The backbone is built by :meth:`build_backbone`; subclasses swap it (see
    ``decision_transformer_qwen3.py``) and keep everything else, so trainers and evaluators serve
    every backbone alike. A backbone maps ``(inputs_embeds [B, 3T, D], attention_mask [B, 3T])`` to
    hidden states ``[B, 3T, D]``.
    """

    def __init__(
        self,
        state_dim: int,
        act_dim: int,
        hidden_size: int,
        max_length: int | None = None,
        max_ep_len: int = 4096,
        action_tanh: bool = True,
        action_low=-1.0,
        action_high=1.0,
        **backbone_kwargs,
    ):
        super().__init__(state_dim, act_dim, max_length, action_low, action_high)
        self.hidden_size = hidden_size
        self.action_tanh = action_tanh
        self.transformer = self.build_backbone(hidden_size, **backbone_kwargs)

        self.embed_timestep = nn.Embedding(max_ep_len, hidden_size)
        self.embed_return = nn.Linear(1, hidden_size)
        self.embed_state = nn.Linear(state_dim, hidden_size)
        self.embed_action = nn.Linear(act_dim, hidden_size)
        self.embed_ln = nn.LayerNorm(hidden_size)

        # The original also predicts states and returns; only the action loss trains them.
        self.predict_state = nn.Linear(hidden_size, state_dim)
        self.predict_action = nn.Linear(hidden_size, act_dim)
        self.predict_return = nn.Linear(hidden_size, 1)

    def build_backbone(self, hidden_size: int, **kwargs) -> nn.Module:
        return TrajectoryGPT2(GPT2Config(n_embd=hidden_size, **kwargs))

    def forward(self, states, actions, rewards, returns_to_go, timesteps, attention_mask=None):
        """``attention_mask [B, T]`` (1 = real step) for a batch with padding; None when there is
        none, which the backbone turns into plain causal attention without looking at a mask."""
        B, T = states.shape[:2]

        time_emb = self.embed_timestep(timesteps)
        state_emb = self.embed_state(states) + time_emb
        action_emb = self.embed_action(actions) + time_emb
        return_emb = self.embed_return(returns_to_go) + time_emb

        # [B, 3, T, D] -> [B, T, 3, D] -> [B, 3T, D], ordered R_1, s_1, a_1, R_2, ...
        tokens = torch.stack((return_emb, state_emb, action_emb), dim=2).reshape(B, 3 * T, -1)
        tokens = self.embed_ln(tokens)
        token_mask = None if attention_mask is None else attention_mask.repeat_interleave(3, dim=1)

        x = self.transformer(inputs_embeds=tokens, attention_mask=token_mask)
        x = x.reshape(B, T, 3, self.hidden_size)  # x[:, t, i]: the token of R_t, s_t or a_t

        return_preds = self.predict_return(x[:, :, 2])  # next return, given state and action
        state_preds = self.predict_state(x[:, :, 2])  # next state, given state and action
        action_preds = self.predict_action(x[:, :, 1])  # action, given state
        if self.action_tanh:
            action_preds = self.squash_action(action_preds)
        return state_preds, action_preds, return_preds

    @torch.no_grad()
    def get_actions(self, states, actions, rewards, returns_to_go, timesteps, **kwargs):
        """Equal-length histories ``[N, T, ...]`` -> actions ``[N, act_dim]`` for the last step."""
        states, pad = self.window(states)
        actions, _ = self.window(actions)
        returns_to_go, _ = self.window(returns_to_go)
        timesteps, _ = self.window(timesteps)
        N, T = states.shape[:2]
        attention_mask = None  # pad is a Python int: no padding known without asking the device
        if pad:
            attention_mask = torch.ones((N, T), dtype=torch.long, device=states.device)
            attention_mask[:, :pad] = 0
        _, action_preds, _ = self(
            states.float(),
            actions.float(),
            None,
            returns_to_go.float(),
            timesteps.long(),
            attention_mask=attention_mask,
            **kwargs,
        )
        return action_preds[:, -1]
