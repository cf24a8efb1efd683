"""The training loop shared by every model: steps, schedule, evaluation, and the original's logs."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; raised before the bad step touches the weights."""


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        get_batch: Callable,
        loss_fn: Callable,
        scheduler=None,
        eval_fns: list[Callable] | None = None,
        autocast_dtype: torch.dtype | None = None,
        grad_clip: float = 0.25,
        progress: bool = True,
    ):
        self.model = model
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.get_batch = get_batch
        self.loss_fn = loss_fn
        self.scheduler = scheduler
        self.eval_fns = eval_fns or []
        self.autocast_dtype = autocast_dtype
        self.grad_clip = grad_clip
        self.progress = progress
        self.diagnostics: dict[str, float] = {}
        self.start_time = time.time()

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    def train_iteration(self, num_steps: int, iter_num: int = 0, print_logs: bool = False) -> dict:
        train_losses = []
        last_lr = self.optimizer.param_groups[0]["lr"]
        logs: dict[str, float] = {}
        train_start = time.time()
        self.model.train()
        # disable=None: a bar on terminals, none in redirected logs (SLURM, CI), which the
        # per-iteration printout serves better than carriage-return spam.
        steps = tqdm(
            range(num_steps),
            desc=f"iteration {iter_num}",
            leave=False,
            disable=None if self.progress else True,
        )
        for step in steps:
            loss = self.train_step()
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss} at step {step + 1} of iteration {iter_num}"
                )
            train_losses.append(loss)
            last_lr = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            if step % 100 == 0:
                steps.set_postfix(loss=f"{loss:.4f}")
        logs["time/training"] = time.time() - train_start

        eval_start = time.time()
        self.model.eval()
        with self.autocast():
            for eval_fn in self.eval_fns:
                for k, v in eval_fn(self.model).items():
                    logs[f"evaluation/{k}"] = v
        logs["time/total"] = time.time() - self.start_time
        logs["time/evaluation"] = time.time() - eval_start
        logs["training/train_loss_mean"] = float(np.mean(train_losses))
        logs["training/train_loss_std"] = float(np.std(train_losses))
        # The rate the last step used: what a schedule is doing shows in the logged curves.
        logs["training/learning_rate"] = last_lr
        logs.update(self.diagnostics)

        if print_logs:
            print("=" * 80)
            print(f"Iteration {iter_num}")
            for k, v in logs.items():
                print(f"{k}: {v}")
        return logs

    def train_step(self) -> float:
        raise NotImplementedError

    def optimize(self, loss: torch.Tensor) -> float:
        """Backward, clip, step; returns the loss, refusing a non-finite one before any update."""
        value = loss.detach().float().item()
        if not math.isfinite(value):
            return value
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return value
