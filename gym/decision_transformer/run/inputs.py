"""What a run reads before it builds anything: the env's shapes, the dataset (with
--val_episodes its training/held-out split), and what best.pt selects by. Every check of the
user's inputs that needs the disk or the env happens here, before any long work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.holdout import split_episodes
from ..data.loading import check_dataset_available, load_dataset
from ..data.trajectories import TrajectoryDataset
from ..envs import EnvSpec, get_spec, make_env
from ..models.factory import build_model
from ..training.validation import VALIDATION_KEY
from .config import ConfigError, RunConfig, resolve_targets, selection_target
from .distributed import DistContext
from .evaluation import format_target, target_key
from .paths import check_output_dir, check_run_start
from .selection import Selection


@dataclass
class RunData:
    """What the run reads from the disk and the env before it builds anything."""

    spec: EnvSpec
    out_dir: Path
    ckpt_path: Path
    dataset: TrajectoryDataset
    state_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    # With --val_episodes: sorted indices of the episodes trained on and of those held out.
    train_episodes: np.ndarray | None = None
    val_episodes: np.ndarray | None = None

    def build_model(self, cfg: RunConfig) -> torch.nn.Module:
        model = build_model(
            cfg.model_config(),
            self.state_dim,
            self.act_dim,
            self.spec.max_ep_len,
            self.action_low,
            self.action_high,
        )
        if cfg.return_bins:  # the bins cut the data's scaled returns-to-go
            model.set_return_range(*self.dataset.return_range(self.spec.scale))
        return model


def load_data(cfg: RunConfig, ctx: DistContext | None = None) -> RunData:
    """Everything that can fail on bad input, done before any training. Under torchrun each
    node's local rank 0 reads (for a minari id: downloads) the dataset first and its other
    ranks after, from the store or page cache it filled."""
    spec = get_spec(cfg.env)
    # Rank 0 alone tries making the folder (others would race it): it is the one that writes.
    out_dir = check_output_dir(cfg.out_dir, "--out_dir", probe=ctx is None or ctx.is_main)
    ckpt_path = check_run_start(out_dir, cfg.resume)
    check_dataset_available(cfg.data_dir, cfg.env, cfg.dataset)
    env = make_env(cfg.env)
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    env.close()
    with (ctx or DistContext()).local_rank_first():
        dataset = load_dataset(cfg.data_dir, cfg.env, cfg.dataset, cfg.mode)
    dataset.check_env_dims(state_dim, act_dim, cfg.env, f"dataset '{cfg.dataset}'")
    data = RunData(spec, out_dir, ckpt_path, dataset, state_dim, act_dim, low, high)
    if cfg.val_episodes:
        hold_out_episodes(cfg, data)
    return data


def hold_out_episodes(cfg: RunConfig, data: RunData) -> None:
    """--val_episodes: the seeded split, and the state mean/std of the training episodes only
    (what the checkpoint records and evaluation normalises with). Targets such as max or p90
    still read the whole dataset's returns: they describe the data, not the split."""
    data.dataset, data.train_episodes, data.val_episodes = held_out_split(cfg, data.dataset)


def held_out_split(
    cfg: RunConfig, dataset: TrajectoryDataset
) -> tuple[TrajectoryDataset, np.ndarray, np.ndarray]:
    """``dataset`` with the state statistics of its training episodes, and the sorted indices
    of those and of the held-out ones: the split a run with --val_episodes and --seed makes of
    it (each task of a multi-task run its own, by the same rule and seed)."""
    train, val = split_episodes(cfg.val_episodes, len(dataset.lengths), cfg.seed)
    return dataset.with_state_stats_of(train), train, val


def make_selection(cfg: RunConfig, data: RunData, targets: list[float]) -> Selection | None:
    """What best.pt keeps (--select_by), its target checked to be one evaluated; None when the
    run neither validates nor selects (then nothing of this runs: the run is as before)."""
    if not cfg.select_by:
        return Selection("", VALIDATION_KEY, True) if cfg.val_episodes else None
    if cfg.select_by == "val_error":
        return Selection(cfg.select_by, VALIDATION_KEY, True)
    spec = selection_target(cfg.select_by)
    (target,) = resolve_targets([spec], data.dataset.returns, data.spec.env_targets)
    if target not in targets:
        raise ConfigError(
            f"--select_by {cfg.select_by}: target {format_target(target)} is not evaluated "
            f"(targets: {', '.join(map(format_target, targets))}); add {spec} to --env_targets "
            "or select another"
        )
    key = f"evaluation/{target_key(target)}_return_mean"
    return Selection(cfg.select_by, key, False)
