from __future__ import annotations

import torch

from .trainer import Trainer


def masked_action_mse(
    action_preds: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared error over the actions of real steps (``mask`` 1, padding 0), in fp32.

    ``preds``/``actions [B, K, A]``, ``mask [B, K]``. A masked mean rather than boolean indexing
    (``preds[mask > 0]``), whose output size depends on the data and so makes the host wait for
    the GPU; every window has at least one real step, so the divisor is never zero.
    """
    err = (action_preds.float() - actions).square().sum(-1)  # [B, K]
    return (err * mask).sum() / (mask.sum() * action_preds.shape[-1])


class SequenceTrainer(Trainer):
    """Decision Transformer training: predict every real action in the window from its state.

    The loss is the masked action MSE (:func:`masked_action_mse`), the original's loss; the
    ``loss_fn`` argument serves :class:`ActTrainer` only."""

    def compute_loss(self) -> torch.Tensor:
        batch = self.get_batch()
        states, actions, rewards, dones, rtg, timesteps, attention_mask = batch
        # The sampler knows in numpy whether any window is padded; None tells the model there is
        # no padding, so it never has to ask the device (see data/sampler.py Batch).
        model_mask = attention_mask if getattr(batch, "padded", True) else None
        with self.autocast():
            _, action_preds, _ = self.model(
                states, actions, rewards, rtg[:, :-1], timesteps, attention_mask=model_mask
            )
        return masked_action_mse(action_preds, actions, attention_mask)

    def train_step(self) -> float:
        value = super().train_step()
        # The original logged the masked action MSE, which is this loss.
        self.diagnostics["training/action_error"] = value
        return value


def masked_multitask_action_mse(
    action_preds: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, act_dims: torch.Tensor
) -> torch.Tensor:
    """:func:`masked_action_mse` over rows of several tasks: ``preds``/``actions [B, K, A_max]``
    zero past each row's own action size (so those entries add nothing), ``act_dims [B]`` the
    sizes. The mean over every real (step, action entry) of the batch, as one task's loss is."""
    err = (action_preds.float() - actions).square().sum(-1)  # [B, K]
    return (err * mask).sum() / (mask.sum(-1) * act_dims).sum()


class MultiTaskSequenceTrainer(SequenceTrainer):
    """DT training on batches that mix tasks (data/multitask.py's TaskBatch): the model is told
    which rows are whose (``groups``), the loss averages over each row's real action entries."""

    def compute_loss(self) -> torch.Tensor:
        batch = self.get_batch()
        states, actions, rewards, dones, rtg, timesteps, attention_mask = batch
        model_mask = attention_mask if batch.padded else None
        with self.autocast():
            _, action_preds, _ = self.model(
                states, actions, rewards, rtg[:, :-1], timesteps, attention_mask=model_mask,
                groups=batch.groups,
            )  # fmt: skip
        return masked_multitask_action_mse(action_preds, actions, attention_mask, batch.act_dims)
