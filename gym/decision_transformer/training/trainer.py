"""The training loop shared by every model: guarded optimizer steps, the schedule, and the
original's training logs. Evaluation and validation are phases of the run (run/run.py), not of
the trainer: the trainer trains steps."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

# An AdamW step moves each weight by about the learning rate, so at any sane rate the global
# weight norm changes by a small fraction per step. Growing more than this factor in one step
# (or overflowing fp32, as weights of 1e30 do: their squares pass 3.4e38) means the weights are
# ruined even when a saturated tanh head keeps the loss finite.
MAX_WEIGHT_NORM_GROWTH = 4.0
# Optimizer steps between two weight-norm checks inside an iteration. A check reads every weight
# (1.8 GB for qwen3-0.6b, 7.7 GB for 2048x24; under FSDP one more all-reduce), so checking each
# step would cost each step that; every 10th step costs a tenth. The check after an iteration's
# last step, before its checkpoint, always runs, so the checkpoint kept is always a good one; a
# blow-up is noticed at most this many steps late, and those steps are thrown away with the run.
WEIGHT_CHECK_INTERVAL = 10
# Seconds between progress lines when no progress bar shows (output redirected to a file).
PROGRESS_INTERVAL = 30.0


class NonFiniteError(RuntimeError):
    """A training step failed the guard: its loss or gradient norm was NaN or inf (raised before
    the optimizer touched the weights), or the weights themselves blew up. ``step`` is the
    1-based global optimizer step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def weight_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the weights, in fp32 on the device: no host sync."""
    return torch.nn.utils.get_total_norm([p.detach() for p in params])


def weights_blown_up(norm: float, previous: float | None) -> bool:
    return not math.isfinite(norm) or (
        previous is not None and norm > MAX_WEIGHT_NORM_GROWTH * previous
    )


@dataclass(frozen=True)
class TrainerOptions:
    """How the trainer steps: numerics, clipping, accumulation, progress output, guard."""

    autocast_dtype: torch.dtype | None = None
    grad_clip: float = 0.25
    # Several micro-batches per optimizer step, gradients reduced on the last.
    grad_accum_steps: int = 1
    progress: bool = True  # a bar (terminal) or a line every progress_interval seconds
    progress_interval: float = PROGRESS_INTERVAL
    weight_check_interval: int | None = None  # None: WEIGHT_CHECK_INTERVAL
    # A DT with a return head (--return_bins): its cross-entropy's weight beside the action loss.
    return_loss_weight: float = 1.0


class Trainer:
    """``get_batch()`` is the next micro-batch (a RankBatches, or any callable of no argument);
    ``ctx`` (run/distributed.DistContext) sums each step's numbers across ranks so that every
    rank takes the same decision."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        get_batch: Callable,
        loss_fn: Callable | None = None,
        scheduler=None,
        options: TrainerOptions | None = None,
        ctx=None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.get_batch = get_batch
        self.loss_fn = loss_fn
        self.scheduler = scheduler
        opts = options or TrainerOptions()
        self.options = opts
        self.autocast_dtype = opts.autocast_dtype
        self.grad_clip = opts.grad_clip
        self.progress = opts.progress
        self.progress_interval = opts.progress_interval
        self.grad_accum_steps = opts.grad_accum_steps
        self.ctx = ctx
        # Global L2 norm of the weights at the last check, and after how many optimizer steps
        # that check was (None until the first step of this process).
        self.last_weight_norm: float | None = None
        self.last_checked_step: int | None = None
        self.weight_check_interval = opts.weight_check_interval or WEIGHT_CHECK_INTERVAL
        self.global_step = 0  # optimizer steps applied, across iterations (set on resume)
        self.diagnostics: dict[str, float] = {}
        self.start_time = time.time()

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    def train_iteration(self, num_steps: int, iter_num: int = 0) -> dict:
        """``num_steps`` guarded optimizer steps; the iteration's training logs (time, loss,
        learning rate, the subclass's diagnostics). The model is left in train mode."""
        train_start = time.time()
        self.model.train()
        losses, last_lr = self.run_steps(num_steps, iter_num, train_start)
        # The check before a checkpoint: the last step's update has not been looked at yet.
        self.check_weights(float(full_tensor(weight_norm(list(self.model.parameters())))))
        return {
            "time/training": time.time() - train_start,
            "training/train_loss_mean": float(np.mean(losses)),
            "training/train_loss_std": float(np.std(losses)),
            # The rate the last step used: what a schedule is doing shows in the logged curves.
            "training/learning_rate": last_lr,
            **self.diagnostics,
        }

    def run_steps(self, num_steps: int, iter_num: int, start: float) -> tuple[list, float]:
        """The steps with their progress output; their losses and the last learning rate."""
        losses = []
        last_lr = self.optimizer.param_groups[0]["lr"]
        # disable=None: a bar on terminals, none in redirected logs (SLURM, CI), which the
        # per-iteration printout serves better than carriage-return spam.
        steps = tqdm(
            range(num_steps),
            desc=f"iteration {iter_num}",
            leave=False,
            disable=None if self.progress else True,
        )
        # No bar when output is redirected (SLURM, nohup, CI): print a line every
        # progress_interval seconds instead, so a long first iteration is not silent.
        lines = self.progress and steps.disable
        last_line = time.time()
        for step in steps:
            loss = self.train_step()
            losses.append(loss)
            last_lr = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            if step % 100 == 0:
                steps.set_postfix(loss=f"{loss:.4f}")
            if lines and time.time() - last_line >= self.progress_interval:
                last_line = time.time()
                rate = (step + 1) / (last_line - start)
                eta = (num_steps - step - 1) / rate
                print(
                    f"iteration {iter_num}: step {step + 1}/{num_steps}, loss {loss:.4g}, "
                    f"{rate:.3g} steps/s, ETA {format_seconds(eta)}",
                    flush=True,
                )
        return losses, last_lr

    def compute_loss(self) -> torch.Tensor:
        """One micro-batch's loss (draws its batch through ``get_batch``)."""
        raise NotImplementedError

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns the loss averaged
        over micro-batches and ranks. Raises NonFiniteError (on every rank alike) instead of
        stepping when the step fails the guard."""
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.grad_accum_steps
        total = None
        for micro in range(accum):
            # Gradients are all-reduced on the last micro-step only.
            with gradient_sync(self.model, micro == accum - 1):
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
        """Clip, decide, step. The step is applied only when the loss (on every rank) and the
        gradient norm are finite and the weights it starts from are sane; otherwise
        NonFiniteError, raised before optimizer.step, so the weights stay as they were."""
        params = list(self.model.parameters())
        gnorm = full_tensor(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        bad = ~(torch.isfinite(loss) & torch.isfinite(gnorm))
        extra = self.step_stats()
        stats = torch.stack([loss, bad.float(), *(x.float() for x in extra)])
        world = 1
        if self.ctx is not None:
            stats = self.ctx.all_reduce_sum(stats)
            world = self.ctx.world_size
        numbers = [stats, gnorm.float().reshape(1)]
        check = self.weight_check_due()
        if check:
            # The weights this step's forward used, i.e. after the previous step's update.
            numbers.append(full_tensor(weight_norm(params)).float().reshape(1))
        # The one host sync of the step: everything the guard and the logs need, at once.
        # gnorm and the weight norm are the same on every rank (gradients are all-reduced).
        loss_sum, n_bad, *rest = torch.cat(numbers).tolist()
        extra_v, (gnorm_v, *wnorm_v) = rest[: len(extra)], rest[len(extra) :]
        value = loss_sum / world
        step = self.global_step + 1
        if check:
            self.check_weights(wnorm_v[0])
        if n_bad:
            raise NonFiniteError(
                f"step {step} not applied: loss {value:.4g}, gradient norm {gnorm_v:.4g}", step
            )
        self.optimizer.step()
        self.global_step = step
        if extra:
            # Means over ranks, on the device and on the host (read in the sync above).
            self.after_step(stats[2:] / world, [v / world for v in extra_v])
        return value

    def step_stats(self) -> list[torch.Tensor]:
        """0-d tensors a subclass wants averaged over ranks and read in the step's one sync."""
        return []

    def after_step(self, device_means: torch.Tensor, host_means: list[float]) -> None:
        """Called after an applied step with :meth:`step_stats` averaged over ranks."""

    def extra_state(self) -> dict:
        """What a subclass adds to the checkpoint (weights_only-safe values)."""
        return {}

    def load_extra_state(self, ckpt: dict) -> None:
        """Restore :meth:`extra_state` from a checkpoint that holds it."""

    def weight_check_due(self) -> bool:
        """Whether this step checks the weights: the first step of the process, then every
        ``weight_check_interval`` steps (train_iteration checks after each iteration's last)."""
        last = self.last_checked_step
        return last is None or self.global_step - last >= self.weight_check_interval

    def check_weights(self, norm: float) -> None:
        """Raise when the weights blew up since the last check (NaN/inf, or a jump of more than
        MAX_WEIGHT_NORM_GROWTH). The step that did it was applied already, so the run must stop;
        a checkpoint is never written after it (see train_iteration)."""
        if weights_blown_up(norm, self.last_weight_norm):
            was = "" if self.last_weight_norm is None else f" (was {self.last_weight_norm:.4g})"
            first = (
                self.global_step if self.last_checked_step is None else self.last_checked_step + 1
            )
            which = (
                f"step {self.global_step}"
                if first >= self.global_step
                else f"one of steps {first}-{self.global_step}"
            )
            raise NonFiniteError(
                f"{which} blew up the weights: their norm is {norm:.4g}{was}, "
                "though the loss stayed finite",
                self.global_step,
            )
        self.last_weight_norm = norm
        self.last_checked_step = self.global_step


def gradient_sync(model: torch.nn.Module, sync: bool):
    """Context for one micro-step: gradients are reduced across ranks (DDP, FSDP2) only when
    ``sync``; a plain module has nothing to reduce."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()  # DDP


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """FSDP2's norms are DTensors holding the global value; a plain tensor passes through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
