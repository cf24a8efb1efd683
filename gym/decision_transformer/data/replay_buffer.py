"""The Online Decision Transformer's trajectory replay buffer (Zheng, Zhang and Grover, 2022).

Whole trajectories, at most ``capacity`` of them (the ODT keeps 1000): first the offline
dataset's best by return, then, as online episodes arrive, a FIFO that drops the oldest. The
offline ones count as inserted in ascending order of return, so the worst of them leaves first,
as in the ODT's reference code.

Returns-to-go are never stored: they are recomputed from the rewards each trajectory actually
received (hindsight relabelling), so an online episode played while conditioned on an ambitious
exploration target trains with the return it achieved. They are divided by the same ``scale``
as the offline data (the env's, 1000 for MuJoCo), so old and new windows share one scale.

Training windows come from the offline sampler itself (``data/sampler.py``): the buffer exposes
its trajectories as a :class:`TrajectoryDataset` view, normalised with the *offline* dataset's
state statistics (what the model was pretrained with and what rollouts normalise by), and
:class:`BatchSampler` draws trajectories in proportion to their length and builds the padded
windows exactly as offline training does.

``state_dict()`` holds tensors, ints and strings only, so a checkpoint can carry the buffer and be
read back with ``torch.load(weights_only=True)``; loading it reproduces the buffer bit for bit.
The offline trajectories still in the buffer are saved as their indices in the dataset (plus
their lengths and reward sum, checked on load), not as copies: a checkpoint holds the online
episodes' arrays only, and the buffer is rebuilt from the dataset the resumed run loads anyway.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DatasetError
from .sampler import BatchSampler
from .trajectories import TrajectoryDataset, episode_returns_to_go

# The ODT's buffer size, in trajectories (--replay_size 1000 in its main.py).
DEFAULT_CAPACITY = 1000
_ONLINE_FIELDS = ("observations", "actions", "rewards", "dones", "lengths")
_STATE_KEYS = (
    *_ONLINE_FIELDS,
    "offline_episodes",
    "offline_lengths",
    "offline_reward_sum",
    "capacity",
    "num_added",
    "mode",
    "state_mean",
    "state_std",
)


class TrajectoryReplayBuffer:
    """Trajectories back to back, oldest first; see the module docstring."""

    def __init__(
        self,
        capacity: int,
        state_mean: np.ndarray,
        state_std: np.ndarray,
        act_dim: int,
        mode: str = "normal",
    ):
        if capacity < 1:
            raise ValueError(f"the buffer must hold at least one trajectory, not {capacity}")
        self.capacity = int(capacity)
        self.state_mean = np.asarray(state_mean, dtype=np.float32)
        self.state_std = np.asarray(state_std, dtype=np.float32)
        # 'delayed' datasets moved each return onto the last step; online episodes must match.
        self.mode = mode
        S = self.state_mean.shape[0]
        self.observations = np.zeros((0, S), dtype=np.float32)
        self.actions = np.zeros((0, act_dim), dtype=np.float32)
        self.rewards = np.zeros(0, dtype=np.float32)
        self.dones = np.zeros(0, dtype=np.float32)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.num_added = 0  # online trajectories added over the buffer's life
        # The offline trajectories still held (always the oldest, so the first ones), as indices
        # into the dataset they came from, which state_dict saves instead of their arrays.
        self.offline_episodes = np.zeros(0, dtype=np.int64)
        self._source: TrajectoryDataset | None = None
        self._view: TrajectoryDataset | None = None

    @classmethod
    def from_dataset(
        cls,
        dataset: TrajectoryDataset,
        capacity: int = DEFAULT_CAPACITY,
        mode: str = "normal",
        episodes: np.ndarray | None = None,
    ) -> TrajectoryReplayBuffer:
        """The ``capacity`` offline trajectories of highest return (all of them if fewer), worst
        first, chosen among ``episodes`` (indices into ``dataset``; None: all of them), the ones
        offline training draws from. ``dataset`` is the one the model trains on (its rewards
        already rewritten for ``mode='delayed'``); its state statistics become the buffer's."""
        buf = cls(capacity, dataset.state_mean, dataset.state_std, dataset.act_dim, mode)
        pool = np.arange(len(dataset.lengths)) if episodes is None else np.sort(episodes)
        # Ascending return, ties by index (the order a stable sort of all episodes gives).
        best = pool[np.argsort(dataset.returns[pool], kind="stable")][-buf.capacity :]
        buf._source = dataset
        buf._set_content(*_episodes_of(dataset, best), dataset.lengths[best].copy())
        buf.offline_episodes = best.astype(np.int64)
        return buf

    def _set_content(self, observations, actions, rewards, dones, lengths) -> None:
        self.observations = observations.astype(np.float32, copy=False)
        self.actions = actions.astype(np.float32, copy=False)
        self.rewards = rewards.astype(np.float32, copy=False)
        self.dones = dones.astype(np.float32, copy=False)
        self.lengths = lengths.astype(np.int64, copy=False)
        self._view = None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_steps(self) -> int:
        return len(self.rewards)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def returns(self) -> np.ndarray:
        """``[len]`` float64 return of each trajectory, oldest first."""
        return self.dataset().returns if len(self) else np.zeros(0)

    def add(self, paths: list[dict[str, np.ndarray]]) -> None:
        """Append finished episodes (oldest first) and drop the oldest trajectories beyond
        ``capacity``. Each episode is a dict like the dataset files': ``observations [T, S]``
        (raw, as the env returned them), ``actions [T, A]`` (what was played, env units),
        ``rewards [T]`` and ``terminals [T]`` (or ``dones``). Raises DatasetError on a malformed
        episode, before the buffer changes."""
        if not paths:
            return
        # from_paths validates and concatenates; it empties what it is given, so shallow copies.
        new = TrajectoryDataset.from_paths(
            [dict(p) for p in paths], mode=self.mode, source="the collected episodes"
        )
        if (new.state_dim, new.act_dim) != (self.observations.shape[1], self.actions.shape[1]):
            raise DatasetError(
                f"collected episodes have observation/action dims {new.state_dim}/{new.act_dim}, "
                f"the buffer {self.observations.shape[1]}/{self.actions.shape[1]}"
            )
        lengths = np.concatenate([self.lengths, new.lengths])
        drop = max(0, len(lengths) - self.capacity)  # oldest trajectories out
        cut = int(lengths[:drop].sum())  # their steps, counted over old then new
        old_cut = min(cut, self.num_steps)
        new_cut = cut - old_cut

        def keep(old: np.ndarray, fresh: np.ndarray) -> np.ndarray:
            # One copy of what stays; slicing alone would keep the dropped rows alive.
            return np.concatenate([old[old_cut:], fresh[new_cut:].astype(old.dtype, copy=False)])

        self.observations = keep(self.observations, new.observations)
        self.actions = keep(self.actions, new.actions)
        self.rewards = keep(self.rewards, new.rewards)
        self.dones = keep(self.dones, new.dones)
        self.lengths = lengths[drop:]
        self.offline_episodes = self.offline_episodes[min(drop, len(self.offline_episodes)) :]
        self.num_added += len(new.lengths)
        self._view = None

    def dataset(self) -> TrajectoryDataset:
        """The buffer as a :class:`TrajectoryDataset` (shared arrays, no copy), returns-to-go
        relabelled from the rewards received and states normalised by the offline statistics.
        Rebuilt after each :meth:`add`."""
        if self._view is None:
            if not len(self):
                raise ValueError("the replay buffer is empty: nothing to sample")
            starts = self.starts
            rtg = episode_returns_to_go(self.rewards, starts, self.lengths)
            self._view = TrajectoryDataset(
                self.observations,
                self.actions,
                self.rewards,
                self.dones,
                rtg,
                starts,
                self.lengths,
                rtg[starts].copy(),
                self.state_mean,
                self.state_std,
            )
        return self._view

    def sampler(
        self,
        K: int,
        max_ep_len: int,
        scale: float,
        device: str | torch.device = "cpu",
        rng: np.random.Generator | None = None,
        segment_len: int | None = None,
    ) -> BatchSampler:
        """The offline sampler over the buffer's current trajectories, all of them, drawn in
        proportion to their length (no --pct_traj cut): batches in the offline format, a function
        of ``rng`` and the buffer's content. Make a new one after each :meth:`add`."""
        return BatchSampler(self.dataset(), K, max_ep_len, scale, device, rng, segment_len)

    def state_dict(self) -> dict:
        """Tensors (CPU copies), ints and strings: safe under ``torch.load(weights_only=True)``.
        The offline trajectories are referenced by index (see the module docstring)."""
        n_off = len(self.offline_episodes)
        off_steps = int(self.lengths[:n_off].sum())
        state = {
            name: torch.from_numpy(getattr(self, name)[off_steps:].copy())
            for name in ("observations", "actions", "rewards", "dones")
        }
        state.update(
            lengths=torch.from_numpy(self.lengths[n_off:].copy()),
            offline_episodes=torch.from_numpy(self.offline_episodes.copy()),
            offline_lengths=torch.from_numpy(self.lengths[:n_off].copy()),
            offline_reward_sum=torch.tensor(self.rewards[:off_steps].sum(dtype=np.float64)),
            capacity=self.capacity,
            num_added=self.num_added,
            mode=self.mode,
            state_mean=torch.from_numpy(self.state_mean.copy()),
            state_std=torch.from_numpy(self.state_std.copy()),
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        """Replace the buffer's content with ``state`` (from :meth:`state_dict`); a buffer whose
        state references offline trajectories must come from :meth:`from_dataset` on the same
        dataset. ValueError if ``state`` does not fit this buffer (shapes, statistics, capacity,
        mode, offline trajectories) or is inconsistent; the buffer is then unchanged."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"not a replay buffer state (no {', '.join(missing)})")
        arrays = {name: np.asarray(state[name].numpy()) for name in _ONLINE_FIELDS}
        n = int(arrays["lengths"].sum())
        S, A = self.observations.shape[1], self.actions.shape[1]
        off = np.asarray(state["offline_episodes"].numpy()).astype(np.int64)
        problems = []
        if int(state["capacity"]) != self.capacity:
            problems.append(f"capacity {state['capacity']} where this buffer has {self.capacity}")
        if state["mode"] != self.mode:
            problems.append(f"mode {state['mode']!r} where this buffer has {self.mode!r}")
        if len(off) + len(arrays["lengths"]) > self.capacity or (arrays["lengths"] < 1).any():
            problems.append("trajectory lengths that do not fit its capacity")
        shapes = {"observations": (n, S), "actions": (n, A), "rewards": (n,), "dones": (n,)}
        for name, shape in shapes.items():
            if arrays[name].shape != shape:
                problems.append(f"{name} of shape {arrays[name].shape}, expected {shape}")
        for name, mine in (("state_mean", self.state_mean), ("state_std", self.state_std)):
            if not np.array_equal(state[name].numpy(), mine):
                problems.append(f"another {name} (a buffer of another dataset)")
        offline = None
        if len(off):
            src = self._source
            if src is None or off.min() < 0 or off.max() >= len(src.lengths):
                problems.append("offline trajectories of a dataset this buffer was not built from")
            else:
                offline = _episodes_of(src, off)
                if not (
                    np.array_equal(src.lengths[off], state["offline_lengths"].numpy())
                    and offline[2].sum(dtype=np.float64) == float(state["offline_reward_sum"])
                ):
                    problems.append("offline trajectories that differ from this buffer's dataset")
        if problems:
            raise ValueError("the replay buffer state does not fit: " + "; ".join(problems))
        online = [arrays[name] for name in ("observations", "actions", "rewards", "dones")]
        if offline is not None:
            online = [np.concatenate([o, x.astype(o.dtype)]) for o, x in zip(offline, online)]
            lengths = np.concatenate([self._source.lengths[off], arrays["lengths"]])
        else:
            lengths = arrays["lengths"]
        self._set_content(*online, lengths)
        self.offline_episodes = off
        self.num_added = int(state["num_added"])


def _episodes_of(dataset: TrajectoryDataset, episodes: np.ndarray) -> tuple[np.ndarray, ...]:
    """(observations, actions, rewards, dones) of ``episodes`` of ``dataset``, back to back."""
    rows = np.concatenate(
        [np.arange(s, s + n) for s, n in zip(dataset.starts[episodes], dataset.lengths[episodes])]
    )
    return (
        dataset.observations[rows],
        dataset.actions[rows],
        dataset.rewards[rows],
        dataset.dones[rows],
    )
