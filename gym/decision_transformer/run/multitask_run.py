"""A run over several tasks (``--tasks``): :class:`MultiTaskRun`, the :class:`Run` with its inputs,
batches, trainer and evaluation in their multi-task forms (run/multitask.py, data/multitask.py,
models/multitask.py). The loop, checkpoints (RunState), resume, DDP and metrics are the run's."""

from __future__ import annotations

import numpy as np

from ..data.multitask import MultiTaskSampler, task_probabilities
from ..data.sampler import BatchSampler, top_trajectories
from ..training.seq_trainer import MultiTaskSequenceTrainer
from .batches import RankBatches
from .config import resolve_targets
from .multitask import (
    MultiTaskData,
    MultiTaskEvaluation,
    format_task_table,
    load_task_data,
    target_labels,
    task_evals,
)
from .run import Run


class MultiTaskRun(Run):
    """:class:`Run` over ``cfg.tasks``; see the module docstring."""

    def load_inputs(self):
        cfg = self.cfg
        self.data = data = load_task_data(cfg, self.ctx)
        for t in data.tasks:
            t.targets = resolve_targets(cfg.env_targets, t.dataset.returns, t.spec.env_targets)
        self.targets = {t.name: t.targets for t in data.tasks}
        return data, None  # --select_by is refused with --tasks

    def state_stats(self) -> tuple:
        tasks = self.data.tasks
        return (
            {t.name: t.dataset.state_mean for t in tasks},
            {t.name: t.dataset.state_std for t in tasks},
        )

    def make_evaluation(self) -> MultiTaskEvaluation:
        tasks = self.data.tasks
        labels = target_labels(self.cfg, [t.targets for t in tasks])
        return MultiTaskEvaluation(
            self.cfg, task_evals(tasks), labels, self.ctx, self.parallel.lockstep
        )

    def samplers(self, np_rng: np.random.Generator | None = None) -> list[BatchSampler]:
        """Each task's own sampler: its data, episode cap and return scale."""
        cfg = self.cfg
        return [
            BatchSampler(
                t.dataset,
                cfg.K,
                t.spec.max_ep_len,
                t.spec.scale,
                cfg.device,
                np_rng,
                segment_len=cfg.segment_len,
                episodes=top_trajectories(t.dataset, cfg.pct_traj),
            )
            for t in self.data.tasks
        ]

    def make_batches(self, np_rng: np.random.Generator) -> RankBatches:
        cfg = self.cfg
        sampler = MultiTaskSampler(self.samplers(np_rng), cfg.task_sampling)
        return RankBatches(sampler, cfg.seed, self.ctx, cfg.batch_size, cfg.grad_accum_steps, True)

    def make_trainer(self) -> MultiTaskSequenceTrainer:
        return MultiTaskSequenceTrainer(
            self.model, self.state.optimizer, self.batches, None, self.state.scheduler,
            self.trainer_options(), self.ctx,
        )  # fmt: skip

    def announce(self, data: MultiTaskData, resumed: dict | None) -> None:
        cfg = self.cfg
        shares = task_probabilities(self.samplers(), cfg.task_sampling)
        print("=" * 50)
        print(f"Starting new experiment: {len(data.tasks)} tasks ({cfg.task_sampling} sampling)")
        for t, share in zip(data.tasks, shares):
            print(f"task {t.name} ({share:.0%} of batch rows): {t.dataset.summary()}")
        print("=" * 50)
        self.announce_scale(resumed)

    def summarize(self, logs: dict) -> None:
        print("=" * 50)
        print(format_task_table(task_evals(self.data.tasks), logs, "evaluation/"))
