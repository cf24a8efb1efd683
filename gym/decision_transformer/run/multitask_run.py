"""A run over several tasks (``--tasks``): :class:`MultiTaskRun`, the :class:`Run` with its inputs,
batches, trainer and evaluation in their multi-task forms (run/multitask.py, data/multitask.py,
models/multitask.py). The loop, checkpoints (RunState), resume, DDP and metrics are the run's."""

from __future__ import annotations

import numpy as np

from ..data.holdout import validation_batches
from ..data.multitask import MultiTaskSampler, task_probabilities
from ..data.sampler import BatchSampler, top_trajectories
from ..training.seq_trainer import MultiTaskSequenceTrainer
from ..training.validation import VALIDATION_KEY, MultiTaskValidationSet, ValidationSet
from .batches import RankBatches
from .config import resolve_targets
from .distributed import unwrap
from .multitask import (
    MultiTaskData,
    MultiTaskEvaluation,
    format_task_table,
    load_task_data,
    target_labels,
    task_evals,
)
from .run import Run, check_val_windows, print_best
from .selection import Selection


class MultiTaskRun(Run):
    """:class:`Run` over ``cfg.tasks``; see the module docstring."""

    def load_inputs(self):
        cfg = self.cfg
        self.data = data = load_task_data(cfg, self.ctx)
        for t in data.tasks:
            t.targets = resolve_targets(cfg.env_targets, t.dataset.returns, t.spec.env_targets)
        self.targets = {t.name: t.targets for t in data.tasks}
        # best.pt by the validation error's mean over tasks (--select_by return@ is refused).
        selection = None
        if cfg.val_episodes:
            selection = Selection(cfg.select_by or "", VALIDATION_KEY, True)
        return data, selection

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
                episodes=top_trajectories(t.dataset, cfg.pct_traj, t.train_episodes),
            )
            for t in self.data.tasks
        ]

    def make_validation(self) -> MultiTaskValidationSet | None:
        """With --val_episodes: each task's fixed windows of its held-out episodes, the ones a
        single-task run on its dataset draws (same seed, count and batching), measured through
        the task's own view of the model (training/validation.py)."""
        cfg, ctx = self.cfg, self.ctx
        if not cfg.val_episodes:
            return None
        check_val_windows(cfg, ctx)
        parts = []
        for t in self.data.tasks:
            sampler = BatchSampler(
                t.dataset, cfg.K, t.spec.max_ep_len, t.spec.scale, cfg.device,
                segment_len=cfg.segment_len, episodes=t.val_episodes,
            )  # fmt: skip
            batches = validation_batches(
                sampler, cfg.val_windows, cfg.seed, cfg.batch_size, ctx.rank, ctx.world_size
            )
            parts.append((t.name, ValidationSet(batches, True)))
        return MultiTaskValidationSet(parts, ctx)

    def validate(self) -> dict:
        # Each task's view calls the root's own modules (embeddings, heads) without the root's
        # forward: under FSDP they are gathered for it as for the evaluation.
        with self.parallel.evaluating(self.model):
            return self.validation(unwrap(self.model))

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
        if cfg.val_episodes:
            held = ", ".join(f"{t.name} {len(t.val_episodes)}" for t in data.tasks)
            print(
                f"validation: episodes held out per task ({held}; --val_episodes "
                f"{cfg.val_episodes}), {cfg.val_windows} fixed windows each; best.pt by "
                f"{cfg.select_by or 'nothing (no --select_by)'} (the mean over tasks)"
            )
        print("=" * 50)
        self.announce_scale(resumed)

    def summarize(self, logs: dict) -> None:
        print("=" * 50)
        print(format_task_table(task_evals(self.data.tasks), logs, "evaluation/"))
        print_best(self.state.selection)
