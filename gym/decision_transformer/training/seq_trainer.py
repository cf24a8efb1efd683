from __future__ import annotations

import torch
import torch.nn.functional as F

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


def masked_return_ce(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The return head's cross-entropy, ``logits [B, K, bins]`` against the bins ``targets [B,
    K]`` of the returns-to-go the model was fed, averaged over real steps (``mask``), in fp32."""
    B, K, n = logits.shape
    ce = F.cross_entropy(logits.float().reshape(B * K, n), targets.reshape(B * K), reduction="none")
    return (ce.view(B, K) * mask).sum() / mask.sum()


class SequenceTrainer(Trainer):
    """Decision Transformer training: predict every real action in the window from its state.

    The loss is the masked action MSE (:func:`masked_action_mse`), the original's loss; the
    ``loss_fn`` argument serves :class:`ActTrainer` only. A model with a return head
    (``return_bins``) adds its cross-entropy (:func:`masked_return_ce`) times the options'
    ``return_loss_weight``; both terms are then logged apart."""

    def compute_loss(self) -> torch.Tensor:
        batch = self.get_batch()
        states, actions, rewards, dones, rtg, timesteps, attention_mask = batch
        # The sampler knows in numpy whether any window is padded; None tells the model there is
        # no padding, so it never has to ask the device (see data/sampler.py Batch).
        model_mask = attention_mask if getattr(batch, "padded", True) else None
        with self.autocast():
            _, action_preds, return_preds = self.model(
                states, actions, rewards, rtg[:, :-1], timesteps, attention_mask=model_mask
            )
        loss = masked_action_mse(action_preds, actions, attention_mask)
        return self.with_return_loss(loss, return_preds, rtg, attention_mask)

    def with_return_loss(
        self, action_loss, return_preds, rtg, mask, groups: tuple = ()
    ) -> torch.Tensor:
        """``action_loss``, plus the return head's weighted cross-entropy when it has one. The
        head is trained on the very returns-to-go the model was fed (``rtg[:, :-1]``)."""
        model = getattr(self.model, "module", self.model)  # DDP's wrapped model
        if not getattr(model, "return_bins", 0):
            return action_loss
        targets = model.return_targets(rtg[:, :-1], groups)
        ce = masked_return_ce(return_preds, targets, mask)
        # The trainer scales the whole loss by the micro-batch's share of the global batch's
        # action entries; the cross-entropy's share is that of its real steps (the two differ
        # when the tasks' action sizes do), so that ranks and micro-steps sum to the union's.
        weight = getattr(self.get_batch, "weight", 1.0)
        return_weight = getattr(self.get_batch, "return_weight", 1.0)
        # Kept on the device, each times its share: their mean over micro-batches and ranks (in
        # the step's one sync) is then the global batch's mean, as one process finds it.
        self.loss_parts = [
            *getattr(self, "loss_parts", []),
            torch.stack((action_loss.detach() * weight, ce.detach() * return_weight)),
        ]
        return action_loss + self.options.return_loss_weight * (return_weight / weight) * ce

    def step_stats(self) -> list[torch.Tensor]:
        parts = getattr(self, "loss_parts", [])
        if not parts:
            return []
        self.loss_parts = []
        return list(torch.stack(parts).float().mean(0))

    def after_step(self, device_means: torch.Tensor, host_means: list[float]) -> None:
        action_error, return_ce = host_means
        self.diagnostics["training/action_error"] = action_error
        self.diagnostics["training/return_ce"] = return_ce

    def train_step(self) -> float:
        value = super().train_step()
        if "training/return_ce" not in self.diagnostics:
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
            _, action_preds, return_preds = self.model(
                states, actions, rewards, rtg[:, :-1], timesteps, attention_mask=model_mask,
                groups=batch.groups,
            )  # fmt: skip
        loss = masked_multitask_action_mse(action_preds, actions, attention_mask, batch.act_dims)
        return self.with_return_loss(loss, return_preds, rtg, attention_mask, batch.groups)
