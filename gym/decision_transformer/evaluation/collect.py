"""Data collection for the online phase: episodes played by the stochastic policy, kept whole.

It drives the evaluators' batched rollout core (evaluate_episodes.run_chunk): one model call per
step for all envs, the DT's key/value cache, and the same seeds-to-episodes mapping.
"""

from __future__ import annotations

import numpy as np
import torch

from ..envs import get_spec, make_vector_env
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
    e, spec = episodes, get_spec(episodes.env)
    model.eval()
    paths: list[dict] = []
    returns, lengths = [], []
    envs = make_vector_env(e.env, min(num_envs, len(seeds)))
    try:
        for chunk in range(0, len(seeds), envs.num_envs):
            r, n = run_chunk(
                envs, model, seeds[chunk : chunk + envs.num_envs], spec.max_ep_len, spec.scale,
                e.state_mean, e.state_std, torch.device(e.device), e.target / spec.scale, e.mode,
                e.conditioned, None, True, generator=generator, paths=paths,
            )  # fmt: skip
            returns.append(r)
            lengths.append(n)
    finally:
        envs.close()
    return paths, np.concatenate(returns), np.concatenate(lengths)
