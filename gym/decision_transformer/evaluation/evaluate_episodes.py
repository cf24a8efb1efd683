"""Rolling out a policy in its env: the original one-episode evaluators and a batched one.

``evaluate_episode`` (BC) and ``evaluate_episode_rtg`` (DT) keep the original signatures, on
gymnasium's API. An :class:`EvalEpisodes` describes one evaluation target's episodes in a suite
env (env, state statistics, target, mode, device); ``evaluate_batched`` plays one per seed, many
at once through a vector env with one model call per step for all of them (the same returns as
the sequential path for the same seeds, only faster), ``play_one_by_one`` through the original
evaluators. All drive the same rollout core (``rollout.py``, configured by a ``RolloutSpec``):
histories, returns-to-go and model calls (with a DT's key/value cache) are written once.

Each evaluator takes an optional ``on_step(action, reward)`` hook, called after every env step of
one episode (the only one, or for the batched evaluator the episode of ``seeds[0]``): enough to
replay that exact episode elsewhere, e.g. to render it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..envs import get_spec, make_env, make_vector_env
from ..models.return_bins import AUTO_TARGET, DEFAULT_KAPPA
from .rollout import Rollout, RolloutSpec

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
    spec = RolloutSpec(max_ep_len, state_mean, state_std, device, mode=mode, conditioned=False)
    return _play_one(env, model, state_dim, act_dim, spec, seed, on_step)


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
    return_kappa: float | None = None,
) -> tuple[float, int]:
    """One episode conditioned on ``target_return`` (already divided by ``scale``), the return-to-go
    falling by each reward received ('delayed' keeps it fixed). Returns (return, length). With
    ``return_kappa`` (a model with a return head), each step's return is sampled instead (see
    rollout.py), from a generator seeded by ``seed``."""
    spec = RolloutSpec(
        max_ep_len, state_mean, state_std, device, target_return, scale, mode,
        return_kappa=return_kappa,
    )  # fmt: skip
    return _play_one(env, model, state_dim, act_dim, spec, seed, on_step)


def _play_one(
    env, model, state_dim: int, act_dim: int, spec: RolloutSpec, seed, on_step
) -> tuple[float, int]:
    model.eval()
    state = _reset(env, seed, spec.mode, np.random.default_rng(seed))
    rollout = Rollout(model, 1, state_dim, act_dim, spec, seeds=[seed])
    rollout.start(np.reshape(state, (1, state_dim)))
    episode_return, episode_length = 0.0, 0
    for _ in range(spec.max_ep_len):
        action = rollout.act()[0].float().cpu().numpy()
        state, reward, terminated, truncated, _ = env.step(action)
        if on_step is not None:
            on_step(action, float(reward))
        rollout.record(np.reshape(state, (1, state_dim)), reward)
        episode_return += reward
        episode_length += 1
        if terminated or truncated:
            break
    return episode_return, episode_length


@dataclass(frozen=True)
class EvalEpisodes:
    """How the episodes of one evaluation target are played in a suite env; the seeds and model
    come with each call. The episode cap and return scale are the env's (``get_spec``)."""

    env: str  # suite env name
    state_mean: np.ndarray  # what the policy normalises its states with
    state_std: np.ndarray
    # Return to condition on, in the env's units (None: zero), or "auto": each step's return
    # sampled from the model's return head, tilted toward high returns by return_kappa.
    target: float | str | None = None
    mode: str = "normal"  # the run's --mode ('noise' perturbs the initial state)
    conditioned: bool = True  # a DT, conditioned on ``target``; BC ignores it
    device: str | torch.device = "cpu"
    max_ep_len: int | None = None  # a shorter cap than the env's (benchmarks)
    use_cache: bool = True  # False recomputes every step (a DT's check and benchmark baseline)
    return_kappa: float = DEFAULT_KAPPA  # --return_kappa (a target of "auto" only)

    def rollout_spec(self) -> RolloutSpec:
        spec = get_spec(self.env)
        auto = self.target == AUTO_TARGET
        return RolloutSpec(
            max_ep_len=self.max_ep_len or spec.max_ep_len,
            state_mean=self.state_mean,
            state_std=self.state_std,
            device=self.device,
            target_return=None if self.target is None or auto else self.target / spec.scale,
            scale=spec.scale,
            mode=self.mode,
            conditioned=self.conditioned,
            use_cache=self.use_cache,
            return_kappa=self.return_kappa if auto and self.conditioned else None,
        )


@torch.no_grad()
def evaluate_batched(
    episodes: EvalEpisodes,
    model,
    seeds: list[int],
    num_envs: int,
    on_step: StepHook | None = None,
    on_chunk: Callable[[int], None] | None = None,
    still_running: Callable[[bool], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Play one episode per seed, ``num_envs`` at a time, with one model call per env step; the
    same returns as the one-episode evaluators for the same seeds, only faster.

    ``on_chunk(n)`` is told each time ``n`` more episodes are done (for progress bars). Returns
    per-episode returns and lengths, in seed order.

    ``still_running(running)`` is asked after every step whether to go on, told whether this
    call still has an episode running: processes that share one sharded model pass one that
    asks every process (any still running?), so that each makes the same number of model
    calls, their finished rows stepping on as spare rows do. They must then also play the same
    number of chunks, i.e. get the same number of seeds.
    """
    model.eval()
    spec = episodes.rollout_spec()
    returns, lengths = [], []
    # One vector env serves every chunk: building Humanoid's envs costs ~0.1 s each, more than a
    # short episode's stepping. A last, partial chunk leaves its spare envs idle.
    envs = make_vector_env(episodes.env, min(num_envs, len(seeds)))
    try:
        for chunk in range(0, len(seeds), envs.num_envs):
            hook = on_step if chunk == 0 else None
            part = seeds[chunk : chunk + envs.num_envs]
            r, n = run_chunk(envs, model, part, spec, hook, still_running)
            returns.append(r)
            lengths.append(n)
            if on_chunk is not None:
                on_chunk(len(r))
    finally:
        envs.close()
    return np.concatenate(returns), np.concatenate(lengths)


def run_chunk(
    envs,
    model,
    seeds: list[int],
    spec: RolloutSpec,
    on_step: StepHook | None = None,
    still_running: Callable[[bool], bool] | None = None,
    generator: torch.Generator | None = None,
    paths: list[dict] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of episodes in lockstep, one per env (spare envs of a partial chunk replay the
    last seed, inactive from the start). With ``paths`` (a list), each real episode is appended
    to it as a dataset-format dict (what data collection keeps); ``generator`` samples actions."""
    n, real = envs.num_envs, len(seeds)
    seeds = list(seeds) + [seeds[-1]] * (n - real)
    obs, _ = envs.reset(seed=seeds)
    if spec.mode == "noise":  # same draws as the sequential path: one generator per seed
        obs = obs + np.stack([np.random.default_rng(s).normal(0, 0.1, obs.shape[1]) for s in seeds])
    # Every env keeps its row to the end, finished or not: the model always sees n rows.
    A = envs.single_action_space.shape[0]
    rollout = Rollout(model, n, obs.shape[1], A, spec, generator, seeds)
    rollout.start(obs)
    active = np.arange(n) < real
    ep_return = np.zeros(n)
    ep_len = np.zeros(n, dtype=np.int64)
    steps: list[tuple] = []  # (obs, actions, rewards, terminated) per step, when recording
    for _ in range(spec.max_ep_len):
        full = rollout.act().float().cpu().numpy()
        full[~active] = 0.0  # finished envs get a dummy action
        before = obs
        obs, reward, terminated, truncated, _ = envs.step(full)
        if on_step is not None and active[0]:
            on_step(full[0].copy(), float(reward[0]))
        if paths is not None:
            steps.append((before, full.copy(), reward, terminated))
        reward = np.where(active, reward, 0.0)
        ep_return += reward
        ep_len += active
        rollout.record(obs, reward)
        active &= ~(terminated | truncated)
        running = bool(active.any())
        if not (running if still_running is None else still_running(running)):
            break
    if paths is not None:
        paths.extend(_episode_dicts(steps, ep_len[:real]))
    return ep_return[:real], ep_len[:real]


def _episode_dicts(steps: list[tuple], lengths: np.ndarray) -> list[dict]:
    """Episode i of a chunk's recorded steps, cut at its length, as a dataset-format dict."""
    columns = [np.stack(c) for c in zip(*steps)]  # each [T, n, ...]
    out = []
    for i, T in enumerate(lengths):
        obs_i, act_i, rew_i, term_i = (c[:T, i] for c in columns)
        out.append(
            {
                "observations": obs_i.astype(np.float32),
                "actions": act_i.astype(np.float32),
                "rewards": rew_i.astype(np.float32),
                "terminals": term_i.astype(bool),
            }
        )
    return out


def play_one_by_one(
    episodes: EvalEpisodes,
    model,
    seeds: list[int],
    on_step: StepHook | None = None,
    on_episode: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The same with the original one-episode evaluators, in one env; ``on_step`` watches the
    episode of ``seeds[0]``, ``on_episode(1)`` is called after each episode."""
    s = episodes.rollout_spec()
    env = make_env(episodes.env)
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    returns, lengths = [], []
    for i, seed in enumerate(seeds):
        hook = on_step if i == 0 else None
        if s.conditioned:
            r, n = evaluate_episode_rtg(
                env, state_dim, act_dim, model, s.max_ep_len, s.scale, s.state_mean, s.state_std,
                s.device, s.target_return, s.mode, seed=seed, on_step=hook,
                return_kappa=s.return_kappa,
            )  # fmt: skip
        else:
            r, n = evaluate_episode(
                env, state_dim, act_dim, model, s.max_ep_len, s.device, None, s.mode,
                s.state_mean, s.state_std, seed=seed, on_step=hook,
            )  # fmt: skip
        returns.append(r)
        lengths.append(n)
        if on_episode is not None:
            on_episode(1)
    env.close()
    return np.array(returns), np.array(lengths)
