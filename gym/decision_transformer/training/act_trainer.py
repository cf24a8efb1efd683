from __future__ import annotations

import torch

from .trainer import Trainer


class ActTrainer(Trainer):
    """Behaviour cloning: predict the window's last action from its states."""

    def compute_loss(self) -> torch.Tensor:
        states, actions, rewards, dones, rtg, _, attention_mask = self.get_batch()
        with self.autocast():
            state_preds, action_preds, reward_preds = self.model(
                states, actions, rewards, attention_mask=attention_mask, target_return=rtg[:, 0]
            )
        act_dim = action_preds.shape[2]
        action_preds = action_preds.float().reshape(-1, act_dim)
        action_target = actions[:, -1].reshape(-1, act_dim)
        loss = self.loss_fn(
            state_preds, action_preds, reward_preds, states[:, 1:], action_target, rewards[:, 1:]
        )
        return loss

    def train_step(self) -> float:
        value = super().train_step()
        self.diagnostics["training/action_error"] = value
        return value
