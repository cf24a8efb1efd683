"""Training batches for the DT and BC, drawn a whole batch at a time with array indexing.

Semantics are the original ``get_batch``'s: episodes chosen with probability proportional to
their length among the top ``pct_traj`` of timesteps (by episode return), a uniform start inside
the episode, windows of ``K`` steps left-padded (states 0 before normalisation, actions -10,
rewards 0, dones 2, rtg 0, timesteps 0, mask 0), timesteps clipped at ``max_ep_len - 1``, and
returns-to-go with one extra trailing entry (0 past the episode's end), divided by ``scale``.
"""

from __future__ import annotations

import numpy as np
import torch

from .trajectories import TrajectoryDataset


def by_return(dataset: TrajectoryDataset, episodes: np.ndarray | None = None) -> np.ndarray:
    """Episode indices (all, or ``episodes``) by ascending return, ties in index order; the
    identity on indices already in that order (what :func:`top_trajectories` returns)."""
    if episodes is None:
        return np.argsort(dataset.returns, kind="stable")
    return episodes[np.argsort(dataset.returns[episodes], kind="stable")]


def top_trajectories(
    dataset: TrajectoryDataset, pct_traj: float, episodes: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the best episodes (highest return last) that fit in ``pct_traj`` of all steps;
    always at least the best one, as the original. ``episodes`` (sorted indices) restricts the
    choice, and the step budget, to those episodes (the training ones when some are held out)."""
    order = by_return(dataset, episodes)
    steps = dataset.num_steps if episodes is None else dataset.lengths[episodes].sum()
    budget = max(int(pct_traj * steps), 1)
    # Taking episodes from the best down while the running total stays within budget.
    cum = np.cumsum(dataset.lengths[order[::-1]])
    count = max(1, int(np.searchsorted(cum, budget, side="right")))
    return order[-count:]


class Batch(tuple):
    """``(states, actions, rewards, dones, rtg, timesteps, mask)``, unpacked like a plain tuple,
    plus ``padded``: whether any window has padding, known in numpy as the batch was built, so
    that nobody asks the device (``bool(mask.all())`` stalls the host until the GPU catches up)."""

    padded: bool

    def __new__(cls, tensors, padded: bool):
        batch = super().__new__(cls, tensors)
        batch.padded = padded
        return batch


class BatchSampler:
    def __init__(
        self,
        dataset: TrajectoryDataset,
        K: int,
        max_ep_len: int,
        scale: float,
        device: str | torch.device = "cpu",
        rng: np.random.Generator | None = None,
        segment_len: int | None = None,
        episodes: np.ndarray | None = None,
    ):
        self.ds = dataset
        self.K = K
        # Steps per drawn segment: K, or more for window attention (see models/kv_cache.py).
        self.segment_len = segment_len or K
        self.max_ep_len = max_ep_len
        self.scale = scale
        self.device = torch.device(device)
        # Host->GPU copies from pinned memory run asynchronously; from pageable memory each one
        # waits for the GPU to finish its queue first. Pinning needs CUDA, so only then.
        self.pin_memory = self.device.type == "cuda"
        self.rng = rng if rng is not None else np.random.default_rng()
        # Only these episodes are ever drawn (``episodes``: None for all of them; --pct_traj's
        # choice is top_trajectories'), in the order draws index: by return.
        self.episodes = by_return(dataset, episodes)
        lengths = dataset.lengths[self.episodes]
        self.p_sample = lengths / lengths.sum()
        # Normalised value of a zero-padded state, as the original padded before normalising.
        self.pad_state = (-dataset.state_mean / dataset.state_std).astype(np.float32)
        self.inv_std = (1.0 / dataset.state_std).astype(np.float32)

    def __call__(self, batch_size: int, max_len: int | None = None):
        """Returns ``states, actions, rewards, dones, rtg, timesteps, mask`` on ``device``;
        shapes ``[B,K,S] [B,K,A] [B,K,1] [B,K] [B,K+1,1] [B,K] [B,K]``, as a :class:`Batch`, with
        ``segment_len`` (K unless set) in place of K."""
        return self.build(*self.draw(batch_size), max_len or self.segment_len)

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode indices (length-weighted) and uniform start steps for one batch."""
        ep = self.episodes[self.rng.choice(len(self.episodes), size=batch_size, p=self.p_sample)]
        si = (self.rng.random(batch_size) * self.ds.lengths[ep]).astype(np.int64)
        return ep, si

    def loss_terms(self, ep: np.ndarray, si: np.ndarray) -> np.ndarray:
        """The real steps of each segment ``draw`` gave: what its masked-mean loss averages
        over, up to the constant action size."""
        return np.minimum(self.segment_len, self.ds.lengths[ep] - si)

    def real_steps(self, ep: np.ndarray, si: np.ndarray) -> np.ndarray:
        """The real steps of each segment: what the return head's cross-entropy averages over."""
        return self.loss_terms(ep, si)

    def build(self, ep: np.ndarray, si: np.ndarray, K: int):
        """The padded windows of ``K`` steps starting at step ``si`` of episodes ``ep``."""
        ds = self.ds
        start, length = ds.starts[ep], ds.lengths[ep]
        tlen = np.minimum(K, length - si)  # real steps in each window

        # Window position p holds episode step si + j with j = p - (K - tlen); j < 0 is padding.
        j = np.arange(K + 1)[None, :] - (K - tlen)[:, None]  # [B, K+1]; column K is rtg-only
        real = (j >= 0) & (j < tlen[:, None])
        idx = np.where(real, start[:, None] + si[:, None] + j, 0)[:, :K]
        m = real[:, :K]

        states = (ds.observations[idx] - ds.state_mean) * self.inv_std
        states[~m] = self.pad_state
        actions = ds.actions[idx]
        actions[~m] = -10.0
        rewards = np.where(m, ds.rewards[idx], 0.0).astype(np.float32)
        dones = np.where(m, ds.dones[idx], 2.0).astype(np.float32)
        timesteps = np.where(m, np.minimum(si[:, None] + j[:, :K], self.max_ep_len - 1), 0)

        # rtg covers one more step than the states: j in [0, tlen], 0 beyond the episode's end.
        rtg_real = (j >= 0) & (si[:, None] + j < length[:, None])
        rtg_idx = np.where(rtg_real, start[:, None] + si[:, None] + j, 0)
        rtg = np.where(rtg_real, ds.returns_to_go[rtg_idx], 0.0) / self.scale

        def t(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
            # Cast on the host (smaller copies), then pin and copy without blocking: the
            # caching host allocator keeps the pinned block until its copy has finished.
            x = torch.from_numpy(x).to(dtype)
            if self.pin_memory:
                x = x.pin_memory()
            return x.to(self.device, non_blocking=True)

        tensors = (
            t(states),
            t(actions),
            t(rewards[..., None]),
            t(dones),
            t(rtg[..., None].astype(np.float32)),
            t(timesteps, torch.long),
            t(m.astype(np.float32)),
        )
        return Batch(tensors, padded=not bool(m.all()))
