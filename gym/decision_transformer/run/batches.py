"""Each optimizer step's batch, cut across ranks and micro-steps: :class:`RankBatches`.

Batches are a pure function of ``(seed, step)``: each optimizer step draws the indices of the
whole global batch (``batch_size x world_size x grad_accum_steps`` windows) from a generator
seeded by ``(seed, step)``, and rank r / micro-step m builds only its slice. So ranks never draw
the same windows, ``--resume`` is exact without saving any sampler state, and a run with one
process and the global batch sees the very windows a multi-process run sees (the tests rely on
it). A world of one is the same with one slice.
"""

from __future__ import annotations

import numpy as np

from ..data.sampler import BatchSampler
from .distributed import DistContext


class RankBatches:
    """``get_batch`` for the trainer: each call is the next micro-batch of this rank.

    Call ``c`` (counted from the run's start) belongs to optimizer step ``c // accum`` and
    micro-step ``c % accum``; the step's global draw is sliced at position
    ``(rank * accum + micro) * batch_size``. ``weight`` (read after each call) is this
    micro-batch's share of the step's real action tokens times ``world_size * accum``: scaling
    the micro-batch's masked-mean loss by it makes the averaged gradient that of the global
    batch's masked mean, whatever the padding in each slice. ``return_weight`` is the same share
    counted in real steps: the return head's cross-entropy averages over steps, not action
    entries, so across tasks of different action sizes its share differs (seq_trainer.py).
    """

    def __init__(
        self,
        sampler: BatchSampler,
        seed: int,
        ctx: DistContext,
        batch_size: int,
        accum: int,
        per_token: bool,
    ):
        self.sampler, self.seed, self.ctx = sampler, seed, ctx
        self.batch_size, self.accum, self.per_token = batch_size, accum, per_token
        self.calls = 0
        self.weight = self.return_weight = 1.0
        self._drawn: tuple | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.ctx.world_size * self.accum

    def start_at(self, step: int) -> None:
        """Continue from optimizer step ``step`` (on resume)."""
        self.calls = step * self.accum

    def use_sampler(self, sampler) -> None:
        """Draw from ``sampler`` from the next step on (the online phase's replay buffer)."""
        self.sampler = sampler
        self._drawn = None

    def __call__(self, max_len: int | None = None):
        step, micro = divmod(self.calls, self.accum)
        self.calls += 1
        if self._drawn is None or self._drawn[0] != step:  # once per step, not per micro-step
            self.sampler.rng = np.random.default_rng([self.seed, step])
            ep, si = self.sampler.draw(self.global_batch)
            real = self.sampler.loss_terms(ep, si)
            steps = self.sampler.real_steps(ep, si)
            self._drawn = (step, ep, si, real, steps)
        _, ep, si, real, steps = self._drawn
        lo = (self.ctx.rank * self.accum + micro) * self.batch_size
        mine = slice(lo, lo + self.batch_size)
        if self.per_token:
            share = self.ctx.world_size * self.accum
            self.weight = float(real[mine].sum()) * share / real.sum()
            self.return_weight = float(steps[mine].sum()) * share / steps.sum()
        return self.sampler.build(ep[mine], si[mine], max_len or self.sampler.segment_len)
