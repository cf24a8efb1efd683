"""Held-out episodes for validation: which ones, and the fixed windows the error is measured on.

Whole episodes are held out (windows of one episode overlap, so holding out windows would leak
the very steps the model trains on). The draw depends on the run's seed alone, so a resumed run,
every rank of a torchrun job and evaluate.py's readers all hold out the same episodes.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DatasetError
from .sampler import Batch, BatchSampler

# Mixed into the seed so these draws never coincide with the training sampler's (seed, step).
_SPLIT_STREAM = 0x5E1EC7
_WINDOW_STREAM = 0x3A11D


def held_out_count(val_episodes: int | float, num_episodes: int) -> int:
    """``--val_episodes`` as a number of episodes: a count, or a fraction rounded (at least 1)."""
    if val_episodes == 0:
        return 0
    if val_episodes < 1:
        return max(1, round(val_episodes * num_episodes))
    return int(val_episodes)


def split_episodes(
    val_episodes: int | float, num_episodes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of the training and of the held-out episodes, by a seeded draw."""
    n_val = held_out_count(val_episodes, num_episodes)
    if n_val >= num_episodes:
        raise DatasetError(
            f"--val_episodes {val_episodes} holds out {n_val} of the dataset's {num_episodes} "
            "episodes, leaving none to train on: hold out fewer"
        )
    held = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(num_episodes)[:n_val]
    mask = np.zeros(num_episodes, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def validation_windows(
    sampler: BatchSampler, num_windows: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The run's fixed validation windows: episode indices and start steps, drawn once from
    (seed) as training draws (length-weighted episodes of ``sampler``, uniform starts)."""
    sampler.rng = np.random.default_rng([seed, _WINDOW_STREAM])
    return sampler.draw(num_windows)


def validation_batches(
    sampler: BatchSampler, num_windows: int, seed: int, chunk: int, rank: int = 0, world: int = 1
) -> list[Batch]:
    """Rank ``rank``'s contiguous share of the windows, built on the sampler's device in batches
    of at most about ``chunk``: as many batches on every rank (FSDP's sharded forwards need each
    rank to make the same calls), none empty when ``num_windows >= 2 * world``."""
    episodes, starts = validation_windows(sampler, num_windows, seed)
    lo, hi = rank * num_windows // world, (rank + 1) * num_windows // world
    calls = max(1, math.ceil(math.ceil(num_windows / world) / max(chunk, 2)))
    return [
        sampler.build(episodes[idx], starts[idx], sampler.segment_len)
        for idx in np.array_split(np.arange(lo, hi), calls)
    ]
