from __future__ import annotations

import torch

from .trainer import Trainer


class SequenceTrainer(Trainer):
    """Decision Transformer training: predict every real action in the window from its state."""

    def compute_loss(self) -> torch.Tensor:
        states, actions, rewards, dones, rtg, timesteps, attention_mask = self.get_batch(
            self.batch_size
        )
        with self.autocast():
            _, action_preds, _ = self.model(
                states, actions, rewards, rtg[:, :-1], timesteps, attention_mask=attention_mask
            )
        act_dim = action_preds.shape[2]
        real = attention_mask.reshape(-1) > 0
        action_preds = action_preds.float().reshape(-1, act_dim)[real]
        action_target = actions.reshape(-1, act_dim)[real]
        loss = self.loss_fn(None, action_preds, None, None, action_target, None)
        return loss

    def train_step(self) -> float:
        value = super().train_step()
        # The original logged the masked action MSE, which is this loss.
        self.diagnostics["training/action_error"] = value
        return value
