"""Data collection for the online phase: episodes played by the stochastic policy, kept whole.

It drives the evaluators' batched rollout core (evaluate_episodes.run_chunk): one model call per
step for all envs, the DT's key/value cache, and the same seeds-to-episodes mapping.
"""

from __future__ import annotations

import numpy as np
import torch

from ..envs import make_vector_env
from .evaluate_episodes import EvalEpisodes, run_chunk


@torch.no_grad()
def collect_batched(
    episodes: EvalEpisodes,
    model,
    seeds: list[int],
    num_envs: int,
    generator: torch.Generator,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Data collection: one episode per seed, ``num_envs`` at a time, through the evaluators'
    rollout core (one model call per step, the DT's key/value cache), actions sampled from the
    stochastic head with ``generator`` and conditioned on ``episodes.target``. Returns the
    episodes as dataset-format dicts (raw observations, played actions, rewards, terminals;
    'noise' mode's perturbed first observation as the model saw it), returns and lengths."""
    spec = episodes.rollout_spec()
    model.eval()
    paths: list[dict] = []
    returns, lengths = [], []
    envs = make_vector_env(episodes.env, min(num_envs, len(seeds)))
    try:
        for chunk in range(0, len(seeds), envs.num_envs):
            part = seeds[chunk : chunk + envs.num_envs]
            r, n = run_chunk(envs, model, part, spec, generator=generator, paths=paths)
            returns.append(r)
            lengths.append(n)
    finally:
        envs.close()
    return paths, np.concatenate(returns), np.concatenate(lengths)
