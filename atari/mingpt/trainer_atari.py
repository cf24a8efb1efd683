"""Training the Atari DT as the original did: AdamW with decay on matmul/conv weights only, lr
warmed up linearly over the first ``warmup_tokens`` then cosine-decayed to 10% at
``final_tokens`` (tokens = predicted actions), gradients clipped to norm 1.0. Batches come from a
DataLoader with workers over windows of ``context_length`` steps inside one trajectory.

Resume is exact: each epoch's order is a permutation drawn from ``(seed, epoch)``, so a run
restarted at step ``k`` of an epoch skips the first ``k`` batches of the same order.

Under ``torchrun`` the model trains in DDP and ``batch_size`` stays the global batch: every rank
cuts the same permutation into the same batches and takes its own contiguous slice of each, so
N ranks see the windows one process sees, the gradients DDP averages are the global batch's
mean, and the learning-rate schedule counts the global batch's tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from decision_transformer.run.distributed import DistContext
from decision_transformer.run.parallel import wrap_ddp
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .model_atari import AtariDecisionTransformer, action_loss


class WindowDataset(Dataset):
    """Windows of ``K`` consecutive steps of one trajectory: ``states [K, 4, 84, 84]`` uint8,
    ``actions [K]``, ``rtgs [K, 1]``, ``timesteps [1]`` (the window's first step)."""

    def __init__(self, data, K: int):
        self.data, self.K = data, K
        starts, ends = data.starts, data.ends
        self.traj_start = np.repeat(starts, np.maximum(ends - starts - K + 1, 0))
        self.index = np.concatenate(
            [np.arange(s, e - K + 1) for s, e in zip(starts, ends) if e - s >= K] or [[]]
        ).astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, w: int):
        i, s, K = int(self.index[w]), int(self.traj_start[w]), self.K
        frames = np.zeros((K + 3, 84, 84), dtype=np.uint8)  # zeros before the trajectory
        lo = max(s, i - 3)
        frames[3 - (i - lo) :] = self.data.frames[lo : i + K]
        # stack t holds frames t..t+3 of the padded run: [K, 4, 84, 84]
        states = np.lib.stride_tricks.sliding_window_view(frames, 4, axis=0).transpose(0, 3, 1, 2)
        return (
            torch.from_numpy(np.ascontiguousarray(states)),
            torch.from_numpy(self.data.actions[i : i + K]),
            torch.from_numpy(self.data.rtgs[i : i + K, None]),
            torch.tensor([self.data.timesteps[i]]),
        )


class EpochBatches(Sampler[list[int]]):
    """This rank's part of each batch of an epoch, from batch ``skip`` on: a permutation drawn
    from ``(seed, epoch)`` cut into global batches of ``batch_size`` windows, each batch cut
    again into one contiguous slice per rank (``DistContext.share``; a world of one takes it
    whole). The epoch's last batch may be shorter than the ranks are many: a rank left without
    a window then gets the batch's first, which the trainer weighs zero (DDP needs a backward
    from every rank)."""

    def __init__(
        self, n: int, seed: int, epoch: int, skip: int, batch_size: int, world: DistContext
    ):
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip
        self.batch_size, self.world = batch_size, world

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for lo in range(self.skip * self.batch_size, self.n, self.batch_size):
            batch = order[lo : lo + self.batch_size]
            yield self.world.share(batch) or batch[:1]

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.batch_size) - self.skip)

    def windows(self, step: int) -> int:
        """Windows in batch ``step``'s global batch (the epoch's last may be short)."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def weight(self, step: int) -> float:
        """This rank's share of batch ``step``'s windows times the world size: its slice's mean
        loss scaled by it makes DDP's average of the ranks' gradients that of the global
        batch's mean (1 when the batch divides evenly; 0 for a rank given a stand-in window)."""
        m = self.windows(step)
        return len(self.world.share(range(m))) * self.world.world_size / m


PROGRESS_EVERY = 50  # steps between the progress bar's loss readings (each one waits on the GPU)


@dataclass
class TrainerConfig:
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_norm_clip: float = 1.0
    weight_decay: float = 0.1
    warmup_tokens: int = 512 * 20
    final_tokens: int = 0  # the original: 2 * len(dataset) * context_length * 3
    num_workers: int = 0  # run_dt_atari.py passes its --num_workers (default: the CPUs)
    seed: int = 123
    steps_per_epoch: int | None = None  # cap (for quick runs); None = the whole dataset


class Trainer:
    def __init__(
        self,
        model: AtariDecisionTransformer,
        dataset: WindowDataset,
        cfg: TrainerConfig,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        world: DistContext | None = None,
    ):
        """``model`` is the plain model (its state dict is the checkpoint's, evaluation plays
        it); under torchrun (``world`` of several ranks) it trains inside DDP."""
        self.model, self.dataset, self.cfg, self.device = model, dataset, cfg, device
        self.autocast_dtype = autocast_dtype
        self.world = world or DistContext()
        self.train_model = wrap_ddp(model) if self.world.world_size > 1 else model
        self.optimizer = torch.optim.AdamW(
            model.param_groups(cfg.weight_decay), lr=cfg.learning_rate, betas=cfg.betas
        )
        # Progress, all of it in the checkpoint. The epoch's loss sum stays on the device: reading
        # it each step would stall the host until the GPU drained its queue.
        self.epoch, self.step, self.tokens, self.global_step = 0, 0, 0, 0
        self.loss_sum, self.loss_count = self._zero_loss(), 0

    def _zero_loss(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float32, device=self.device)

    def steps_in_epoch(self) -> int:
        n = math.ceil(len(self.dataset) / self.cfg.batch_size)
        return min(n, self.cfg.steps_per_epoch) if self.cfg.steps_per_epoch else n

    def lr(self) -> float:
        c = self.cfg
        if self.tokens < c.warmup_tokens:
            mult = self.tokens / max(1, c.warmup_tokens)
        else:
            progress = (self.tokens - c.warmup_tokens) / max(1, c.final_tokens - c.warmup_tokens)
            mult = max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return c.learning_rate * mult

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def run_epoch(self, on_step: Callable[[Trainer], None] | None = None) -> dict:
        """Train to the end of the current epoch (from ``self.step``); returns its logs."""
        c, model, world = self.cfg, self.train_model, self.world
        model.train()
        total = self.steps_in_epoch()
        n = len(self.dataset)
        batches = EpochBatches(n, c.seed, self.epoch, self.step, c.batch_size, world)
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=c.num_workers,
            pin_memory=self.device.type == "cuda",
            # Worker seeds come from this generator, not the global RNG that dropout uses.
            generator=torch.Generator().manual_seed(c.seed),
        )
        bar = tqdm(total=total, initial=self.step, desc=f"epoch {self.epoch + 1}", leave=False,
                   disable=not world.is_main)  # fmt: skip
        for states, actions, rtgs, timesteps in loader:
            if self.step >= total:
                break
            # From pinned memory (on CUDA) the copies overlap with the previous step's kernels.
            nb = self.device.type == "cuda"
            states = states.to(self.device, non_blocking=nb)
            actions = actions.to(self.device, non_blocking=nb)
            rtgs = rtgs.to(self.device, non_blocking=nb)
            timesteps = timesteps.to(self.device, non_blocking=nb)
            with self.autocast():
                # Through the wrapper's forward (DDP's gradient hooks are armed there).
                loss = action_loss(model(states, actions, rtgs, timesteps), actions)
            weight = batches.weight(self.step)
            if weight != 1.0:
                loss = loss * weight
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # After DDP's all-reduce every rank clips the same (global) gradient.
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_norm_clip)
            self.optimizer.step()
            # The global batch's loss, the same on every rank (DDP averages the ranks' losses).
            loss = world.all_reduce_sum(loss.detach().clone()) / world.world_size
            # The schedule moves with tokens seen (one per predicted action), as the original's;
            # the global batch's, so that N ranks follow one process's schedule.
            self.tokens += batches.windows(self.step) * actions.shape[1]
            lr = self.lr()
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.step += 1
            self.global_step += 1
            self.loss_sum += loss.float()
            self.loss_count += 1
            bar.update(1)
            if world.is_main and self.step % PROGRESS_EVERY == 0:  # the only read of the loss
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            if on_step is not None and self.step < total:
                on_step(self)
        bar.close()
        logs = {
            "train/loss": self.loss_sum.item() / max(1, self.loss_count),
            "train/lr": self.lr(),
            "train/tokens": self.tokens,
        }
        self.epoch, self.step, self.loss_count = self.epoch + 1, 0, 0
        self.loss_sum = self._zero_loss()
        return logs

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "tokens": self.tokens,
            "global_step": self.global_step,
            "loss_sum": self.loss_sum.item(),  # a read, but only when a checkpoint is written
            "loss_count": self.loss_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for k in ("epoch", "step", "tokens", "global_step", "loss_count"):
            setattr(self, k, state[k])
        self.loss_sum = self._zero_loss() + state["loss_sum"]
