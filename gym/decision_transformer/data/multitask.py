"""Training batches over several tasks: :class:`MultiTaskSampler`.

Each task keeps its own :class:`BatchSampler` (its dataset, state statistics, return scale,
episode cap), so a task's windows are exactly what a single-task run on it would build. A batch
draws, per row, a task (``uniform``: each task equally often; ``size``: in proportion to the
timesteps it can draw from), then each task its rows' episodes and starts, in task order, all
from one generator: with RankBatches' generator seeded by ``(seed, step)`` a step's global batch
is a function of the step alone, so resume stays exact and ranks cut one draw.

Rows are built grouped by task (:class:`TaskBatch`'s ``groups``, known on the host), states
and actions zero-padded to the largest sizes, so the model runs one backbone call per batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .sampler import Batch, BatchSampler

SAMPLING = ("uniform", "size")


class TaskBatch(Batch):
    """A :class:`Batch` of several tasks' rows: ``groups`` is ``((task, rows), ...)`` in row
    order, ``act_dims [B]`` each row's action size (on the device)."""

    groups: tuple[tuple[int, int], ...]
    act_dims: torch.Tensor

    def __new__(cls, tensors, padded: bool, groups, act_dims):
        batch = super().__new__(cls, tensors, padded)
        batch.groups, batch.act_dims = groups, act_dims
        return batch


def task_probabilities(samplers: list[BatchSampler], sampling: str) -> np.ndarray:
    """How often each task is drawn: equally (``uniform``), or by the timesteps of the episodes
    it draws from (``size``: as if the datasets were one)."""
    if sampling not in SAMPLING:
        raise ValueError(f"task sampling is one of {SAMPLING}, not {sampling!r}")
    if sampling == "uniform":
        return np.full(len(samplers), 1.0 / len(samplers))
    sizes = np.array([s.ds.lengths[s.episodes].sum() for s in samplers], dtype=np.float64)
    return sizes / sizes.sum()


class MultiTaskSampler:
    """``draw``/``loss_terms``/``build`` as :class:`BatchSampler` has them, over several tasks'
    samplers (all of one ``segment_len`` and device). A drawn row is ``(task, episode)``."""

    def __init__(self, samplers: list[BatchSampler], sampling: str = "uniform"):
        self.samplers = samplers
        self.p_task = task_probabilities(samplers, sampling)
        self.segment_len = samplers[0].segment_len
        self.device = samplers[0].device
        self.max_state_dim = max(s.ds.state_dim for s in samplers)
        self.act_dims = np.array([s.ds.actions.shape[1] for s in samplers])
        self.max_act_dim = int(self.act_dims.max())
        self._rng = np.random.default_rng()

    @property
    def rng(self) -> np.random.Generator:
        return self._rng

    @rng.setter
    def rng(self, rng: np.random.Generator) -> None:
        self._rng = rng  # every task draws from the one generator, in task order
        for s in self.samplers:
            s.rng = rng

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[N, 2]`` of (task, episode) and their start steps."""
        task = self._rng.choice(len(self.samplers), size=batch_size, p=self.p_task)
        ep = np.zeros(batch_size, dtype=np.int64)
        si = np.zeros(batch_size, dtype=np.int64)
        for t, sampler in enumerate(self.samplers):
            rows = np.flatnonzero(task == t)
            if len(rows):
                ep[rows], si[rows] = sampler.draw(len(rows))
        return np.stack([task, ep], axis=1), si

    def loss_terms(self, rows: np.ndarray, si: np.ndarray) -> np.ndarray:
        """Each row's real steps times its task's action size: the terms of the batch's masked
        mean, whose sums weigh DDP slices and accumulation micro-batches (run/batches.py)."""
        out = np.zeros(len(si), dtype=np.int64)
        for t, sampler in enumerate(self.samplers):
            mine = rows[:, 0] == t
            out[mine] = sampler.loss_terms(rows[mine, 1], si[mine]) * self.act_dims[t]
        return out

    def real_steps(self, rows: np.ndarray, si: np.ndarray) -> np.ndarray:
        """Each row's real steps, whatever its action size: the terms of the return head's
        cross-entropy (one per step), which weigh its share apart (run/batches.py)."""
        out = np.zeros(len(si), dtype=np.int64)
        for t, sampler in enumerate(self.samplers):
            mine = rows[:, 0] == t
            out[mine] = sampler.real_steps(rows[mine, 1], si[mine])
        return out

    def build(self, rows: np.ndarray, si: np.ndarray, K: int) -> TaskBatch:
        """The rows' windows, grouped by task in task order, padded to the largest sizes."""
        groups, parts, dims = [], [], []
        for t, sampler in enumerate(self.samplers):
            mine = np.flatnonzero(rows[:, 0] == t)
            if not len(mine):
                continue
            batch = sampler.build(rows[mine, 1], si[mine], K)
            states, actions = batch[0], batch[1]
            states = F.pad(states, (0, self.max_state_dim - states.shape[-1]))
            actions = F.pad(actions, (0, self.max_act_dim - actions.shape[-1]))
            parts.append((batch, (states, actions, *batch[2:])))
            groups.append((t, len(mine)))
            dims += [int(self.act_dims[t])] * len(mine)
        tensors = tuple(torch.cat([p[1][i] for p in parts]) for i in range(7))
        act_dims = torch.tensor(dims, dtype=torch.float32).to(self.device, non_blocking=True)
        padded = any(p[0].padded for p in parts)
        return TaskBatch(tensors, padded, tuple(groups), act_dims)
