"""Rolling out a policy in its env: the original one-episode evaluators and a batched one.

``evaluate_episode`` (BC) and ``evaluate_episode_rtg`` (DT) follow the original code step for step,
on gymnasium's API. ``evaluate_batched`` plays many episodes at once through a vector env with one
model call per step for all of them; it gives the same returns as the sequential path for the same
seeds, only faster.

Each evaluator takes an optional ``on_step(action, reward)`` hook, called after every env step of
one episode (the only one, or for the batched evaluator the episode of ``seeds[0]``): enough to
replay that exact episode elsewhere, e.g. to render it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..envs import make_vector_env

# Called as on_step(action, reward) after each env step of the watched episode.
StepHook = Callable[[np.ndarray, float], None]


def _reset(env, seed: int | None, mode: str, rng: np.random.Generator) -> np.ndarray:
    state, _ = env.reset(seed=seed)
    if mode == "noise":
        state = state + rng.normal(0, 0.1, size=state.shape)
    return state


@torch.no_grad()
def evaluate_episode(
    env,
    state_dim,
    act_dim,
    model,
    max_ep_len=1000,
    device="cuda",
    target_return=None,
    mode="normal",
    state_mean=0.0,
    state_std=1.0,
    seed=None,
    on_step: StepHook | None = None,
) -> tuple[float, int]:
    """One episode with a policy that ignores returns (BC). Returns (return, length)."""
    model.eval()
    state_mean = torch.as_tensor(state_mean, device=device, dtype=torch.float32)
    state_std = torch.as_tensor(state_std, device=device, dtype=torch.float32)
    state = _reset(env, seed, mode, np.random.default_rng(seed))
    states = torch.as_tensor(state, device=device, dtype=torch.float32).reshape(1, state_dim)
    actions = torch.zeros((0, act_dim), device=device, dtype=torch.float32)
    rewards = torch.zeros(0, device=device, dtype=torch.float32)
    episode_return, episode_length = 0.0, 0
    for _ in range(max_ep_len):
        actions = torch.cat([actions, torch.zeros((1, act_dim), device=device)], dim=0)
        rewards = torch.cat([rewards, torch.zeros(1, device=device)])
        action = model.get_action((states - state_mean) / state_std, actions, rewards)
        actions[-1] = action
        action = action.float().cpu().numpy()
        state, reward, terminated, truncated, _ = env.step(action)
        if on_step is not None:
            on_step(action, float(reward))
        cur = torch.as_tensor(state, device=device, dtype=torch.float32).reshape(1, state_dim)
        states = torch.cat([states, cur], dim=0)
        rewards[-1] = reward
        episode_return += reward
        episode_length += 1
        if terminated or truncated:
            break
    return episode_return, episode_length


@torch.no_grad()
def evaluate_episode_rtg(
    env,
    state_dim,
    act_dim,
    model,
    max_ep_len=1000,
    scale=1000.0,
    state_mean=0.0,
    state_std=1.0,
    device="cuda",
    target_return=None,
    mode="normal",
    seed=None,
    on_step: StepHook | None = None,
) -> tuple[float, int]:
    """One episode conditioned on ``target_return`` (already divided by ``scale``), the return-to-go
    falling by each reward received ('delayed' keeps it fixed). Returns (return, length)."""
    model.eval()
    state_mean = torch.as_tensor(state_mean, device=device, dtype=torch.float32)
    state_std = torch.as_tensor(state_std, device=device, dtype=torch.float32)
    state = _reset(env, seed, mode, np.random.default_rng(seed))
    states = torch.as_tensor(state, device=device, dtype=torch.float32).reshape(1, state_dim)
    actions = torch.zeros((0, act_dim), device=device, dtype=torch.float32)
    rewards = torch.zeros(0, device=device, dtype=torch.float32)
    target = torch.tensor(target_return, device=device, dtype=torch.float32).reshape(1, 1)
    timesteps = torch.zeros((1, 1), device=device, dtype=torch.long)
    episode_return, episode_length = 0.0, 0
    for t in range(max_ep_len):
        actions = torch.cat([actions, torch.zeros((1, act_dim), device=device)], dim=0)
        rewards = torch.cat([rewards, torch.zeros(1, device=device)])
        action = model.get_action(
            (states - state_mean) / state_std, actions, rewards, target, timesteps
        )
        actions[-1] = action
        action = action.float().cpu().numpy()
        state, reward, terminated, truncated, _ = env.step(action)
        if on_step is not None:
            on_step(action, float(reward))
        cur = torch.as_tensor(state, device=device, dtype=torch.float32).reshape(1, state_dim)
        states = torch.cat([states, cur], dim=0)
        rewards[-1] = reward
        step_rtg = target[0, -1] if mode == "delayed" else target[0, -1] - reward / scale
        target = torch.cat([target, step_rtg.reshape(1, 1)], dim=1)
        timesteps = torch.cat([timesteps, torch.full((1, 1), t + 1, device=device)], dim=1)
        episode_return += reward
        episode_length += 1
        if terminated or truncated:
            break
    return episode_return, episode_length


@torch.no_grad()
def evaluate_batched(
    env_name: str,
    model,
    seeds: list[int],
    num_envs: int,
    max_ep_len: int,
    scale: float,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    device: str | torch.device = "cpu",
    target_return: float | None = None,
    mode: str = "normal",
    conditioned: bool = True,
    on_step: StepHook | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Play one episode per seed, ``num_envs`` at a time, with one model call per env step.

    ``target_return`` is divided by ``scale`` already, as for :func:`evaluate_episode_rtg`;
    ``conditioned=False`` evaluates a policy that ignores returns (BC). ``on_chunk(n)`` is told
    each time ``n`` more episodes are done (for progress bars). Returns per-episode returns and
    lengths, in seed order.
    """
    model.eval()
    returns, lengths = [], []
    # One vector env serves every chunk: building Humanoid's envs costs ~0.1 s each, more than a
    # short episode's stepping. A last, partial chunk leaves its spare envs idle.
    envs = make_vector_env(env_name, min(num_envs, len(seeds)))
    try:
        for chunk in range(0, len(seeds), envs.num_envs):
            r, n = _run_chunk(
                envs,
                model,
                seeds[chunk : chunk + envs.num_envs],
                max_ep_len,
                scale,
                state_mean,
                state_std,
                torch.device(device),
                target_return,
                mode,
                conditioned,
                on_step if chunk == 0 else None,
            )
            returns.append(r)
            lengths.append(n)
            if on_chunk is not None:
                on_chunk(len(r))
    finally:
        envs.close()
    return np.concatenate(returns), np.concatenate(lengths)


def _run_chunk(
    envs,
    model,
    seeds,
    max_ep_len,
    scale,
    state_mean,
    state_std,
    device,
    target_return,
    mode,
    conditioned,
    on_step,
):
    n, real = envs.num_envs, len(seeds)
    # Spare envs of a partial chunk replay the last seed and are inactive from the start.
    seeds = list(seeds) + [seeds[-1]] * (n - real)
    obs, _ = envs.reset(seed=seeds)
    if mode == "noise":  # same draws as the sequential path: one generator per seed
        obs = obs + np.stack([np.random.default_rng(s).normal(0, 0.1, obs.shape[1]) for s in seeds])
    S, A = obs.shape[1], envs.single_action_space.shape[0]
    mean = torch.as_tensor(state_mean, device=device, dtype=torch.float32)
    std = torch.as_tensor(state_std, device=device, dtype=torch.float32)
    K = model.max_length or max_ep_len
    # Histories for every env; row i of step t is written once and never moved.
    states = torch.zeros((n, max_ep_len + 1, S), device=device)
    actions = torch.zeros((n, max_ep_len + 1, A), device=device)
    rewards = torch.zeros((n, max_ep_len + 1), device=device)
    rtg = torch.zeros((n, max_ep_len + 1), device=device)
    timesteps = torch.arange(max_ep_len + 1, device=device).expand(n, -1)
    states[:, 0] = (torch.as_tensor(obs, device=device, dtype=torch.float32) - mean) / std
    if target_return is not None:
        rtg[:, 0] = float(target_return)
    active = np.arange(n) < real
    ep_return = np.zeros(n)
    ep_len = np.zeros(n, dtype=np.int64)
    for t in range(max_ep_len):
        rows = torch.as_tensor(np.flatnonzero(active), device=device)
        lo = max(0, t + 1 - K)  # the model sees at most its last K steps
        act = model.get_actions(
            states[rows, lo : t + 1],
            actions[rows, lo : t + 1],
            rewards[rows, lo : t + 1],
            rtg[rows, lo : t + 1, None] if conditioned else None,
            timesteps[rows, lo : t + 1] if conditioned else None,
        )
        actions[rows, t] = act.float()
        full = np.zeros((n, A), dtype=np.float32)  # finished envs get a dummy action
        full[active] = act.float().cpu().numpy()
        obs, reward, terminated, truncated, _ = envs.step(full)
        if on_step is not None and active[0]:
            on_step(full[0].copy(), float(reward[0]))
        reward = np.where(active, reward, 0.0)
        ep_return += reward
        ep_len += active
        states[:, t + 1] = (torch.as_tensor(obs, device=device, dtype=torch.float32) - mean) / std
        rewards[:, t] = torch.as_tensor(reward, device=device, dtype=torch.float32)
        step_reward = torch.as_tensor(reward / scale, device=device, dtype=torch.float32)
        rtg[:, t + 1] = rtg[:, t] if mode == "delayed" else rtg[:, t] - step_reward
        active &= ~(terminated | truncated)
        if not active.any():
            break
    return ep_return[:real], ep_len[:real]
