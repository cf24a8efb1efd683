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
        grad_accum_steps: int = 1,
        ctx=None,
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
        # Several micro-batches per optimizer step; ``ctx`` (run/distributed.DistContext) sums
        # the step's stats across ranks so that every rank takes the same decision.
        self.grad_accum_steps = grad_accum_steps
        self.ctx = ctx
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

    def compute_loss(self) -> torch.Tensor:
        """One micro-batch's loss (draws its batch through ``get_batch``)."""
        raise NotImplementedError

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns the loss averaged
        over ranks, or NaN (on every rank alike) when any rank's loss or the gradient norm is
        not finite, in which case the weights are left untouched."""
        from ..run.distributed import no_sync

        self.optimizer.zero_grad(set_to_none=True)
        accum = self.grad_accum_steps
        total = None
        for micro in range(accum):
            # Gradients are all-reduced on the last micro-step only.
            with no_sync(self.model, micro == accum - 1):
                loss = self.compute_loss()
                # The sampler's weight turns micro-batch means into the global batch's mean.
                scale = getattr(self.get_batch, "weight", 1.0) / accum
                # Backward always runs, even on a NaN loss, so no rank waits alone in DDP's
                # all-reduce: the NaN reaches every rank's gradients and the decision below.
                (loss * scale).backward()
            part = loss.detach().float() * scale
            total = part if total is None else total + part
        return self.optimize_step(total)

    def optimize_step(self, loss: torch.Tensor) -> float:
        """Clip, decide (one host fetch, after a sum across ranks), step."""
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            gnorm = gnorm.full_tensor()
        bad = ~(torch.isfinite(loss) & torch.isfinite(gnorm))
        stats = torch.stack([loss, bad.float()])
        world = 1
        if self.ctx is not None:
            stats = self.ctx.all_reduce_sum(stats)
            world = self.ctx.world_size
        loss_sum, n_bad = stats.tolist()
        if n_bad:
            return math.nan
        self.optimizer.step()
        return loss_sum / world

    def optimize(self, loss: torch.Tensor) -> float:
        """Backward, clip, step for a single loss (the step without accumulation)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return self.optimize_step(loss.detach().float())
