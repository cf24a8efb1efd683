"""Several tasks (``--tasks ENV:DATASET ...``): their inputs and their evaluation, for the run
(run/multitask_run.py) and for evaluate.py. Each task keeps what a single-task run on it would
have: its dataset's state mean and std, its env's return scale, episode cap and action box, and
its evaluation targets (``max`` and ``pNN`` read off its own returns; by default its env's two).

Metrics are keyed per task, ``evaluation/<task>/target_<T>_return_mean`` (and ``_std``,
``_length_*``, ``_normalized_score`` where the env has D4RL reference returns), plus the mean
normalized score over the tasks that have one, per target position:
``evaluation/mean/<label>_normalized_score`` with ``<label>`` the ``--env_targets`` spec
(``max``, ``p90``) or ``target1``, ``target2`` for the envs' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data.loading import check_dataset_available, load_dataset
from ..data.trajectories import TrajectoryDataset
from ..envs import EnvSpec, get_spec
from ..errors import DatasetError
from ..models.factory import build_multitask_model
from .config import ConfigError, RunConfig, task_name, task_shapes
from .distributed import DistContext, unwrap
from .evaluation import Evaluation, format_target, target_key
from .inputs import held_out_split
from .paths import check_output_dir, check_run_start


@dataclass
class Task:
    """One task of the run: its name, env, dataset and targets."""

    name: str
    env: str
    dataset_name: str
    spec: EnvSpec
    dataset: TrajectoryDataset
    shape: object  # models.multitask.TaskShape
    targets: list[float] = field(default_factory=list)
    # With --val_episodes: sorted indices of the task's episodes trained on and held out.
    train_episodes: np.ndarray | None = None
    val_episodes: np.ndarray | None = None


@dataclass
class MultiTaskData:
    """What a multi-task run reads before it builds anything (RunData's multi-task form)."""

    out_dir: Path
    ckpt_path: Path
    tasks: list[Task]
    # Each task holds out its own episodes (Task.train_episodes, Task.val_episodes).
    train_episodes: None = None
    val_episodes: None = None

    def build_model(self, cfg: RunConfig) -> torch.nn.Module:
        model = build_multitask_model(cfg.model_config(), [t.shape for t in self.tasks])
        if cfg.return_bins:  # each task's bins cut its own data's scaled returns-to-go
            for i, t in enumerate(self.tasks):
                model.set_return_range(i, *t.dataset.return_range(t.spec.scale))
        return model


def load_task_data(cfg: RunConfig, ctx: DistContext | None = None) -> MultiTaskData:
    """Every task's dataset (all checked to exist before any is read) and env sizes; with
    --val_episodes each task's split, made as a single-task run on its dataset makes it (the
    same rule and seed: the same episodes held out, the training ones' state statistics)."""
    out_dir = check_output_dir(cfg.out_dir, "--out_dir", probe=ctx is None or ctx.is_main)
    ckpt_path = check_run_start(out_dir, cfg.resume)
    pairs = [task.split(":", 1) for task in cfg.tasks]
    for env, dataset in pairs:
        check_dataset_available(cfg.data_dir, env, dataset)
    shapes = task_shapes(cfg.tasks)
    tasks = []
    for task, (env, dataset_name), shape in zip(cfg.tasks, pairs, shapes):
        with (ctx or DistContext()).local_rank_first():
            dataset = load_dataset(cfg.data_dir, env, dataset_name, cfg.mode)
        dataset.check_env_dims(shape.state_dim, shape.act_dim, env, f"task {task}")
        train = val = None
        if cfg.val_episodes:
            try:
                dataset, train, val = held_out_split(cfg, dataset)
            except DatasetError as e:
                raise DatasetError(f"task {task}: {e}") from None
        name = task_name(task)
        tasks.append(Task(name, env, dataset_name, get_spec(env), dataset, shape, [], train, val))
    return MultiTaskData(out_dir, ckpt_path, tasks)


def target_labels(cfg: RunConfig, targets: list[list[float]]) -> list[str]:
    """The names of the target positions (over the tasks' ``targets``) the mean over tasks is
    taken at: the --env_targets specs, or target1, target2 for the envs' defaults."""
    if cfg.env_targets:
        return [str(t) for t in cfg.env_targets]
    return [f"target{i + 1}" for i in range(min(len(t) for t in targets))]


@dataclass(frozen=True)
class TaskEval:
    """What evaluating one task needs: where it plays, how it normalises, what it aims at."""

    name: str
    env: str
    dataset_name: str
    state_mean: np.ndarray
    state_std: np.ndarray
    targets: tuple[float, ...]


def task_evals(tasks: list[Task]) -> list[TaskEval]:
    return [
        TaskEval(
            t.name,
            t.env,
            t.dataset_name,
            t.dataset.state_mean,
            t.dataset.state_std,
            tuple(t.targets),
        )  # fmt: skip
        for t in tasks
    ]


class MultiTaskEvaluation:
    """Each task's episodes at each of its targets, played through the single-task evaluation
    (run/evaluation.py's :class:`Evaluation`: the same seeds, batching and split over ranks) on
    the task's view of the model (``MultiTaskDecisionTransformer.task_model``)."""

    def __init__(
        self,
        cfg: RunConfig,
        tasks: list[TaskEval],
        labels: list[str],
        ctx: DistContext | None = None,
        lockstep: bool = False,
    ):
        self.tasks, self.labels = tasks, labels
        self.evaluations = [
            Evaluation(
                replace(cfg, env=t.env, dataset=t.dataset_name),
                (t.state_mean, t.state_std),
                list(t.targets),
                ctx,
                lockstep,
            )
            for t in tasks
        ]

    def __call__(self, model: torch.nn.Module, recorders: dict | None = None) -> dict:
        """Every task's numbers keyed ``<task>/...``, then the means over tasks ``mean/...``.
        ``recorders``: task index -> a hook watching its first target's first episode."""
        inner = unwrap(model)
        out: dict = {}
        scores: dict[int, list[float]] = {}
        for i, (task, evaluation) in enumerate(zip(self.tasks, self.evaluations)):
            view = inner.task_model(i)
            for j, target in enumerate(task.targets):
                watch = (recorders or {}).get(i) if j == 0 else None
                numbers = evaluation.target(view, target, watch)
                out.update({f"{task.name}/{k}": v for k, v in numbers.items()})
                score = numbers.get(f"{target_key(target)}_normalized_score")
                if score is not None:
                    scores.setdefault(j, []).append(score)
        for j, label in enumerate(self.labels):
            if scores.get(j):
                out[f"mean/{label}_normalized_score"] = float(np.mean(scores[j]))
        return out


def format_task_table(tasks: list[TaskEval], numbers: dict, prefix: str = "") -> str:
    """One line per task and target: raw return, and normalized score where the env has
    reference returns; then the mean normalized scores over tasks."""
    lines = [f"{'task':28s} {'target':>9s} {'return':>17s} {'normalized':>10s}"]
    for t in tasks:
        for target in t.targets:
            key = f"{prefix}{t.name}/{target_key(target)}"
            if f"{key}_return_mean" not in numbers:
                continue
            mean, std = numbers[f"{key}_return_mean"], numbers[f"{key}_return_std"]
            score = numbers.get(f"{key}_normalized_score")
            shown = f"{score:10.1f}" if score is not None else f"{'-':>10s}"
            label = format_target(target)
            lines.append(f"{t.name:28s} {label:>9s} {mean:9.1f} ± {std:5.1f} {shown}")
    for key, value in numbers.items():
        if key.startswith(f"{prefix}mean/"):
            label = key[len(prefix) + len("mean/") :].removesuffix("_normalized_score")
            lines.append(f"mean normalized score over tasks at {label}: {value:.1f}")
    return "\n".join(lines)


def task_video_paths(path: str | None, names: list[str], chosen: str | None) -> dict[int, Path]:
    """``--video PATH`` over tasks: task index -> the clip its first target's first episode
    is rendered to. With ``--video_task NAME`` that task's alone, to PATH; otherwise one per
    task, the task's name inserted before PATH's suffix (``ep.mp4`` -> ``ep-hopper-medium.mp4``)."""
    if chosen is not None and path is None:
        raise ConfigError("--video_task names the task to film: add --video PATH")
    if path is None:
        return {}
    if chosen is not None:
        if chosen not in names:
            raise ConfigError(
                f"--video_task {chosen}: no such task; the model's tasks are {', '.join(names)}"
            )
        return {names.index(chosen): Path(path)}
    p = Path(path)
    return {i: p.with_name(f"{p.stem}-{name}{p.suffix}") for i, name in enumerate(names)}
