"""Model selection: which iteration's weights ``best.pt`` keeps, and the overfitting warning.

``--select_by val_error`` keeps the iteration with the lowest validation action error,
``return@TARGET`` the one with the highest mean evaluation return at TARGET; ties keep the
earlier iteration.

In a run with online rounds (``--online_rounds``), ``return@TARGET`` ranks the offline
iterations and every evaluated online round together (with ``--init_from``, the rounds only: the
offline run keeps its own best.pt); rounds without an evaluation (``--online_eval_every``) are
no candidates. ``val_error`` is refused there: online rounds train on the policy's own episodes,
and the error on held-out offline episodes no longer measures what they improve; without
``--select_by`` an online run keeps no best.pt (``--val_episodes`` still logs the error).

The best value so far and the recent (training, validation) errors travel in every
checkpoint.pt (online rounds' too) under ``"selection"``, so a resumed run chooses exactly as
one that never stopped.

best.pt is written (atomically) before the checkpoint.pt of the same iteration: a run killed
between the two resumes from the previous checkpoint, replays the iteration (resume is exact) and
writes the same best.pt again; the other order could leave a checkpoint recording a best
iteration whose best.pt was never written.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from ..training.validation import (
    OVERFIT_PATIENCE,
    TASK_VALIDATION_KEY,
    VALIDATION_KEY,
    overfitting_starts,
)

TRAIN_KEY = "training/train_loss_mean"


@dataclass
class Selection:
    """The criterion (its metrics key and direction) and the best iteration so far."""

    criterion: str  # the --select_by value, or "" (no best.pt: validation error logged only)
    key: str  # the metrics.jsonl key the criterion reads
    lower_is_better: bool
    best_value: float | None = None
    best_iteration: int | None = None
    # (training error, validation error) of the last iterations, for the overfitting warning;
    # with --tasks, each task's validation error beside them (the warning names the task whose
    # error rose most, since the logged one is their mean).
    history: list[list[float]] = field(default_factory=list)
    task_history: list[dict[str, float]] = field(default_factory=list)

    def observe(self, iteration: int, logs: dict, online: bool = False) -> bool:
        """Record ``iteration``'s logs; True when it is the new best (best.pt to write). Prints
        the overfitting warning (stderr, one line) when a streak begins, offline only: an
        ``online`` round trains on its own episodes, so its validation error says nothing of
        overfitting. An online round not evaluated (--online_eval_every) is no candidate."""
        better = False
        if self.criterion and (not online or self.key in logs):
            value = float(logs[self.key])
            better = self.best_value is None or (
                value < self.best_value if self.lower_is_better else value > self.best_value
            )
            if better:
                self.best_value, self.best_iteration = value, iteration
        if VALIDATION_KEY in logs and not online:
            keep = OVERFIT_PATIENCE + 2
            self.history = [*self.history, [logs[TRAIN_KEY], logs[VALIDATION_KEY]]][-keep:]
            tasks = {k: float(v) for k, v in logs.items() if TASK_VALIDATION_KEY.fullmatch(k)}
            self.task_history = [*self.task_history, tasks][-keep:]
            if overfitting_starts([tuple(h) for h in self.history]):
                warning = overfitting_warning(self.history, self.best_iteration, self.task_history)
                print(warning, file=sys.stderr)
        return better

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """The best so far from a checkpoint of the same run (same criterion: flags compared)."""
        self.best_value = state["best_value"]
        self.best_iteration = state["best_iteration"]
        self.history = [list(h) for h in state["history"]]
        # Checkpoints from before per-task errors were kept have none: the warning then names
        # no task until the streak is made of iterations that logged them.
        self.task_history = [dict(t) for t in state.get("task_history", [])]


def overfitting_warning(
    history: list[list[float]],
    best_iteration: int | None,
    task_history: list[dict[str, float]] | None = None,
) -> str:
    """One line: the streak's errors, and with --tasks the task whose error rose most."""
    (train0, val0), (train1, val1) = history[-OVERFIT_PATIENCE - 1], history[-1]
    kept = f"best.pt keeps iteration {best_iteration}; " if best_iteration else ""
    what, most = "validation action error", ""
    streak = (task_history or [])[-OVERFIT_PATIENCE - 1 :]
    if len(streak) == OVERFIT_PATIENCE + 1 and streak[0] and streak[0].keys() == streak[-1].keys():
        first, last = streak[0], streak[-1]
        key = max(first, key=lambda k: last[k] - first[k])
        what = "validation action error (the mean over tasks)"
        task = TASK_VALIDATION_KEY.fullmatch(key).group(1)
        most = f", most on {task} ({first[key]:.4g} -> {last[key]:.4g})"
    return (
        f"warning: {what} rose for {OVERFIT_PATIENCE} iterations ({val0:.4g} -> {val1:.4g}) "
        f"while training error fell ({train0:.4g} -> {train1:.4g}): the model is "
        f"overfitting{most}; {kept}consider a lower --learning_rate, more --dropout or "
        "--weight_decay, or fewer steps"
    )
