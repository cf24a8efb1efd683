"""Small datasets made from the real simulator for the tests, in the project's file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from decision_transformer.data.pickle_io import save_paths
from decision_transformer.envs import make_env


def rollout_paths(env_name: str, episodes: int, seed: int = 0, max_steps: int = 1000) -> list[dict]:
    """Episodes of a noisy constant-action policy: each episode's action scale differs, so
    returns and lengths spread a little, as in real data."""
    env = make_env(env_name)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    paths = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        bias = rng.uniform(low, high) * 0.3
        noise = 0.2 + 0.8 * ep / max(episodes - 1, 1)
        cols = {
            k: []
            for k in (
                "observations",
                "next_observations",
                "actions",
                "rewards",
                "terminals",
                "timeouts",
            )
        }
        for _ in range(max_steps):
            act = np.clip(bias + noise * rng.uniform(low, high), low, high).astype(np.float32)
            nxt, rew, term, trunc, _ = env.step(act)
            for k, v in zip(cols, (obs, nxt, act, rew, term, trunc)):
                cols[k].append(v)
            obs = nxt
            if term or trunc:
                break
        paths.append(
            {
                "observations": np.asarray(cols["observations"], np.float32),
                "next_observations": np.asarray(cols["next_observations"], np.float32),
                "actions": np.asarray(cols["actions"], np.float32),
                "rewards": np.asarray(cols["rewards"], np.float32),
                "terminals": np.asarray(cols["terminals"], bool),
                "timeouts": np.asarray(cols["timeouts"], bool),
            }
        )
    env.close()
    return paths


def write_dataset(
    data_dir: Path, env_name: str, dataset: str, episodes: int, seed: int = 0, max_steps: int = 1000
) -> Path:
    path = Path(data_dir) / f"{env_name}-{dataset}-v2.pkl"
    save_paths(rollout_paths(env_name, episodes, seed, max_steps), path)
    return path


def write_two_tasks(data_dir: Path) -> None:
    """The multi-task tests' two bodies (hopper:medium, walker2d:medium): small datasets from
    the real simulator, Walker2d's episodes longer than Hopper's."""
    write_dataset(data_dir, "hopper", "medium", episodes=6, max_steps=40)
    write_dataset(data_dir, "walker2d", "medium", episodes=5, max_steps=60)
