"""The validation action error: the training loss, measured on fixed windows of held-out episodes.

The windows are drawn once (see data/holdout.py) and built on the device once; every iteration
then costs a few forward passes and one host sync. The number is the training loss's own
definition (the DT's masked action MSE over every real step of each window, BC's MSE of the
window's last action), so the two curves read on one axis; the model is in eval mode (no dropout).

Under torchrun each rank measures its contiguous share of the windows and one all-reduce sums
[squared error, count]; every rank makes the same number of forward calls, which FSDP's sharded
forwards need, and ends with the same value.

A multi-task run (:class:`MultiTaskValidationSet`) measures each task's windows through the
task's own single-task view of the model, so a task's error means what a single-task run's does,
and logs their mean over tasks, each task weighing the same (as ``--task_sampling uniform``, the
default, weighs them in training), under the single-task key that best.pt selects by.
"""

from __future__ import annotations

import re

import torch

VALIDATION_KEY = "validation/action_error"
# Consecutive iterations of rising validation error (training error falling) before a warning.
OVERFIT_PATIENCE = 3


class ValidationSet:
    """``batches``: this rank's fixed windows (data/holdout.py validation_batches), as many on
    every rank; ``conditioned``: the DT (else BC); ``ctx`` sums across ranks under torchrun."""

    def __init__(self, batches: list, conditioned: bool, ctx=None):
        self.batches = batches
        self.conditioned = conditioned
        self.ctx = ctx

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``{VALIDATION_KEY: error}``; the caller puts the model in eval mode (and autocast)."""
        total = self.terms(model)
        if self.ctx is not None and self.ctx.world_size > 1:
            total = self.ctx.all_reduce_sum(total)
        squared, count = total.tolist()  # the one host sync
        return {VALIDATION_KEY: squared / count}

    @torch.no_grad()
    def terms(self, model: torch.nn.Module) -> torch.Tensor:
        """This rank's [sum of squared errors, number of action entries], on the device."""
        total = None
        for batch in self.batches:
            part = (self._dt_terms if self.conditioned else self._bc_terms)(model, batch)
            total = part if total is None else total + part
        return total

    @staticmethod
    def _dt_terms(model: torch.nn.Module, batch) -> torch.Tensor:
        """[sum of squared errors over real steps, number of such action entries]."""
        states, actions, rewards, _, rtg, timesteps, mask = batch
        model_mask = mask if batch.padded else None
        _, preds, _ = model(
            states, actions, rewards, rtg[:, :-1], timesteps, attention_mask=model_mask
        )
        err = (preds.float() - actions).square().sum(-1)  # [B, K]
        return torch.stack([(err * mask).sum(), mask.sum() * actions.shape[-1]])

    @staticmethod
    def _bc_terms(model: torch.nn.Module, batch) -> torch.Tensor:
        """[sum of squared errors of each window's last action, number of action entries]."""
        states, actions, rewards, _, rtg, _, mask = batch
        _, preds, _ = model(states, actions, rewards, attention_mask=mask, target_return=rtg[:, 0])
        preds = preds.float().reshape(-1, actions.shape[-1])
        err = (preds - actions[:, -1]).square().sum()
        return torch.stack([err, torch.full_like(err, preds.numel())])


def task_validation_key(task: str) -> str:
    """A multi-task run's metrics key of task ``task``'s validation error."""
    return f"validation/{task}/action_error"


# task_validation_key's keys read back (group 1: the task; run/config.py's names hold no "/").
TASK_VALIDATION_KEY = re.compile(r"validation/([^/]+)/action_error")


class MultiTaskValidationSet:
    """Each task's fixed windows (``tasks``: (task name, its :class:`ValidationSet`), in the
    model's task order) through ``model.task_model(i)``, the task's plain DT, as a single-task
    run measures them. Every task's [squared, count] terms are stacked and summed across ranks
    in one all-reduce, read in one host sync; each rank makes the same forward calls (every
    task's windows are split over the ranks in as many batches on each)."""

    def __init__(self, tasks: list[tuple[str, ValidationSet]], ctx=None):
        self.tasks = tasks
        self.ctx = ctx

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``VALIDATION_KEY`` (the mean over tasks) and each task's error; ``model``: the
        multi-task model (unwrapped), in eval mode."""
        views = [model.task_model(i) for i in range(len(self.tasks))]
        total = torch.stack([part.terms(view) for view, (_, part) in zip(views, self.tasks)])
        if self.ctx is not None and self.ctx.world_size > 1:
            total = self.ctx.all_reduce_sum(total)
        errors = [squared / count for squared, count in total.tolist()]  # the one host sync
        out = {VALIDATION_KEY: sum(errors) / len(errors)}
        out.update({task_validation_key(name): e for (name, _), e in zip(self.tasks, errors)})
        return out


def overfitting(history: list[tuple[float, float]], patience: int = OVERFIT_PATIENCE) -> bool:
    """Whether the validation error rose at each of the last ``patience`` iterations while the
    training error ended them lower than it began. ``history``: (training error, validation
    error) per iteration, oldest first. The training error is compared across the span, not
    step by step: its per-iteration mean is noisy, a rising validation error on fixed windows
    is not."""
    if len(history) <= patience:
        return False
    span = history[-patience - 1 :]
    val = [v for _, v in span]
    return all(b > a for a, b in zip(val, val[1:])) and span[-1][0] < span[0][0]


def overfitting_starts(
    history: list[tuple[float, float]], patience: int = OVERFIT_PATIENCE
) -> bool:
    """True at the iteration a streak first qualifies (one warning per streak, not one per
    iteration it lasts)."""
    return overfitting(history, patience) and not overfitting(history[:-1], patience)
