"""Trajectories held contiguously, validated once, with everything the sampler needs precomputed.

The original kept a list of per-episode dicts and, for every sample, sliced one episode and
recomputed its return-to-go from scratch. Here each field is one array over all steps plus episode
offsets; returns-to-go and the state statistics are computed once at load.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from ..errors import DatasetError


def _column_mean_std(
    x: np.ndarray, chunk: int = 1024, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) std in float64, two passes over row chunks: ``np.std``
    would build float64 temporaries twice the size of the whole array. ``rows`` (indices)
    restricts both to those rows, gathered a chunk at a time."""
    n = len(x) if rows is None else len(rows)

    def part(i: int) -> np.ndarray:
        return x[i : i + chunk] if rows is None else x[rows[i : i + chunk]]

    mean = sum(part(i).sum(axis=0, dtype=np.float64) for i in range(0, n, chunk)) / n
    sq = sum(np.square(part(i) - mean).sum(axis=0) for i in range(0, n, chunk))
    return mean, np.sqrt(sq / n)


def delay_rewards(rewards: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """The original's 'delayed' rewrite, in place: each episode's whole return on its last step."""
    totals = np.add.reduceat(rewards, starts)
    rewards[:] = 0.0
    rewards[starts + lengths - 1] = totals


def episode_returns_to_go(
    rewards: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """``[N]`` float64: the sum of each step's rewards from that step to its episode's end, for
    episodes laid back to back (``starts``/``lengths`` as in :class:`TrajectoryDataset`)."""
    # Suffix sums per episode: reverse cumulative sum over all steps, minus what later
    # episodes contribute. float64 so long episodes lose nothing to rounding.
    suffix = np.cumsum(rewards[::-1], dtype=np.float64)[::-1]
    after = np.append(suffix, 0.0)[starts + lengths]  # suffix sum just past each episode's end
    return suffix - np.repeat(after, lengths)


@dataclass
class TrajectoryDataset:
    observations: np.ndarray  # [N, state_dim] float32, all episodes back to back
    actions: np.ndarray  # [N, act_dim] float32
    rewards: np.ndarray  # [N] float32 (after the 'delayed' rewrite, if any)
    dones: np.ndarray  # [N] terminals (or dones) as in the file
    returns_to_go: np.ndarray  # [N] float64: sum of this episode's rewards from each step on
    starts: np.ndarray  # [E] int64 offset of each episode
    lengths: np.ndarray  # [E] int64
    returns: np.ndarray  # [E] float64 undiscounted episode returns
    state_mean: np.ndarray  # [state_dim] over every step of every episode
    state_std: np.ndarray  # [state_dim], + 1e-6 as in the original

    @property
    def state_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def num_steps(self) -> int:
        return len(self.rewards)

    @classmethod
    def from_paths(
        cls, paths: list[dict[str, np.ndarray]], mode: str = "normal", source: str = "dataset"
    ) -> TrajectoryDataset:
        """Concatenate episodes field by field, releasing each episode's arrays once copied, so
        that peak memory stays near one copy of the data. ``paths`` is emptied.

        ``mode='delayed'`` moves each episode's whole return onto its last step, as the original.
        """
        lengths = _checked_lengths(paths, source)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        gather = partial(_gather, paths, starts, lengths, source)
        rewards = gather("rewards")
        dones = gather("terminals", "dones", dtype=np.float32)
        actions = gather("actions")
        observations = gather("observations")
        paths.clear()
        if observations.ndim != 2 or actions.ndim != 2:
            raise DatasetError(f"{source}: observations and actions must be 2-D per trajectory")
        named = {"observations": observations, "actions": actions, "rewards": rewards}
        _check_finite(named, starts, source)

        if mode == "delayed":
            delay_rewards(rewards, starts, lengths)
        returns_to_go = episode_returns_to_go(rewards, starts, lengths)
        returns = returns_to_go[starts].copy()

        mean, std = _column_mean_std(observations)
        return cls(
            observations,
            actions,
            rewards,
            dones,
            returns_to_go,
            starts,
            lengths,
            returns,
            mean.astype(np.float32),
            (std + 1e-6).astype(np.float32),
        )

    def return_range(self, scale: float) -> tuple[float, float]:
        """The lowest and highest return-to-go over every step, divided by ``scale``: what a
        return head's bins cut (models/return_bins.py). A dataset whose returns-to-go are all
        equal gets a range one unit wide, so the bins stay well defined."""
        low = float(self.returns_to_go.min()) / scale
        high = float(self.returns_to_go.max()) / scale
        return (low, high) if high > low else (low, low + 1.0)

    def with_state_stats_of(self, episodes: np.ndarray) -> TrajectoryDataset:
        """This dataset (its arrays shared, not copied) with the state mean and std computed
        over ``episodes`` only: held-out episodes must not inform the normalisation."""
        rows = np.concatenate([np.arange(s, s + n) for s, n in zip(
            self.starts[episodes], self.lengths[episodes]
        )])  # fmt: skip
        mean, std = _column_mean_std(self.observations, rows=rows)
        return replace(
            self, state_mean=mean.astype(np.float32), state_std=(std + 1e-6).astype(np.float32)
        )

    def check_env_dims(self, state_dim: int, act_dim: int, env_name: str, source: str) -> None:
        if (self.state_dim, self.act_dim) != (state_dim, act_dim):
            raise DatasetError(
                f"{source} has observation/action dims {self.state_dim}/{self.act_dim} but env "
                f"'{env_name}' has {state_dim}/{act_dim}: the dataset belongs to another env"
            )

    def summary(self) -> str:
        return (
            f"{len(self.lengths)} trajectories, {self.num_steps} timesteps found\n"
            f"Average return: {self.returns.mean():.2f}, std: {self.returns.std():.2f}\n"
            f"Max return: {self.returns.max():.2f}, min: {self.returns.min():.2f}"
        )


def _checked_lengths(paths: list[dict[str, np.ndarray]], source: str) -> np.ndarray:
    """[E] episode lengths, once every episode has the fields training needs and steps."""
    if not paths:
        raise DatasetError(f"{source} holds no trajectories")
    for i, p in enumerate(paths):
        missing = {"observations", "actions", "rewards"} - p.keys()
        if "terminals" not in p and "dones" not in p:
            missing.add("terminals")
        if missing:
            raise DatasetError(
                f"{source}: trajectory {i} lacks {', '.join(sorted(missing))}; "
                "regenerate the dataset"
            )
    for i, p in enumerate(paths):
        if np.ndim(p["rewards"]) != 1:
            raise DatasetError(
                f"{source}: 'rewards' of trajectory {i} is not a 1-D array; regenerate the dataset"
            )
    lengths = np.array([len(p["rewards"]) for p in paths], dtype=np.int64)
    if (lengths == 0).any():
        raise DatasetError(
            f"{source}: trajectory {int(np.argmin(lengths))} is empty; regenerate the dataset"
        )
    return lengths


def _gather(
    paths: list[dict[str, np.ndarray]],
    starts: np.ndarray,
    lengths: np.ndarray,
    source: str,
    key: str,
    fallback: str | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """Field ``key`` (or ``fallback``) of every episode, back to back in one array, each
    episode's copy popped from its dict once taken."""
    first = paths[0].get(key, paths[0].get(fallback))
    out = np.empty((int(lengths.sum()), *np.shape(first)[1:]), dtype=dtype)
    for i, (p, s, length) in enumerate(zip(paths, starts, lengths)):
        arr = p.pop(key) if key in p else p.pop(fallback)
        # Numbers only: strings or objects would be converted (or fail) far from here.
        kind = getattr(arr, "dtype", np.dtype(object)).kind
        if kind not in "biuf" or np.ndim(arr) == 0:
            raise DatasetError(
                f"{source}: '{key}' of trajectory {i} is not a numeric array "
                f"({type(arr).__name__}, dtype {getattr(arr, 'dtype', None)}); "
                "regenerate the dataset"
            )
        if len(arr) != length:
            raise DatasetError(
                f"{source}: '{key}' of trajectory {i} has {len(arr)} steps where its "
                f"rewards have {length}; regenerate the dataset"
            )
        if np.shape(arr)[1:] != out.shape[1:]:
            raise DatasetError(
                f"{source}: '{key}' of trajectory {i} has shape {np.shape(arr)[1:]} per "
                f"step where trajectory 0 has {out.shape[1:]}; regenerate the dataset"
            )
        out[s : s + length] = arr
    return out


def _check_finite(arrays: dict[str, np.ndarray], starts: np.ndarray, source: str) -> None:
    for name, arr in arrays.items():
        # A float64 sum is finite exactly when every float32 term is: no full-size mask needed.
        if not np.isfinite(arr.sum(dtype=np.float64)):
            bad = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0])
            episode = int(np.searchsorted(starts, bad, side="right") - 1)
            raise DatasetError(
                f"{source}: {name} hold NaN or inf (first at step {bad - starts[episode]} of "
                f"trajectory {episode}); clean or regenerate the dataset"
            )
