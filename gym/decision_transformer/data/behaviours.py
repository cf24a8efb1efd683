"""Behaviour policies for the dataset suite, unlike the embedded balance controller, and how each
is made. Both act on the real simulator's observations and clip to the env's action box.

Randomised PD controller (``RandomisedPD``)
    Each episode draws one joint-space PD controller from a seeded generator and holds it for the
    whole episode: ``a_j = clip(kp_j (target_j - q_j) - kd_j dq_j)`` on every actuated joint ``j``,
    reading the joint angle ``q_j`` and speed ``dq_j`` straight from the observation (Humanoid's
    observation starts with ``qpos[2:]`` and ``qvel``). Per episode and per joint the stiffness
    ``kp`` is log-uniform in ``PDRanges.kp`` (action units per radian), the damping is ``kp``
    times a uniform ratio, and the target posture is a knee/hip crouch of uniform depth plus
    Gaussian offsets on every joint. Nothing in it balances the body: it holds a posture until the
    humanoid topples, after ~55 steps in the median and 25 to ~180 depending on the draw, so the
    returns spread with the gains and the posture (10th to 90th percentile ~190 to ~350, a random
    policy's mean ~120; see benchmarks/README_suite.md), both of which change what the policy
    does in a state, not just its noise.

Linear policy trained by Augmented Random Search (``train_ars``, ``LinearPolicy``)
    ARS V2-t (Mania, Guy and Recht, 2018): a deterministic linear map of the normalised
    observation, ``a = clip(W (s - mean) / std)``, improved by finite differences along random
    directions. Each iteration draws ``directions`` Gaussian matrices ``d``, rolls out ``W + nu d``
    and ``W - nu d`` from the same reset, keeps the ``top`` directions whose better return is
    highest, and moves ``W`` by ``step_size / (top * sigma_R)`` times the sum of
    ``(r+ - r-) d`` over those, ``sigma_R`` being the standard deviation of the kept returns.
    The normaliser's mean and std are those of every state visited during training so far
    (Welford running sums), frozen within an iteration. The reward is the env's own, healthy bonus
    included (the paper removes it to get walkers; a policy that just stays up longer than random
    is all the suite needs). Training runs a fixed number of iterations from a seed, so the same
    seed gives the same policy on the same mujoco build; it is saved as a small ``.npz`` (weights,
    normaliser, recipe hash, learning curve) that the dataset builder reads back with
    ``allow_pickle=False``. The dataset then rolls the trained policy out with per-episode
    Gaussian action noise whose level is graded across episodes (``graded_noise_levels``), so the
    data spans the trained policy's return down to well below it.

Mixture of behaviours (``MixedBehaviour``)
    Each episode first draws which behaviour plays it (``MixRanges.shares``), then that
    behaviour's settings, all from the episode's own generator: the embedded collector's LQR
    balance controller (``humanoid_controller.py``) with a knee-bending offset and mild action
    noise both drawn per episode (the offset makes it sink and fall, after ~50 to ~120 steps:
    the most skilled band); a randomised PD controller as above; the trained
    ARS linear policy with per-episode noise; or a zero action under heavy noise (random-ish,
    falls in ~20-30 steps). Nearly every episode ends early in a fall, so the data is many short
    episodes whose returns differ by *what* was played, not only by luck: data of the shape that
    issue 34's held-out set has, which the single-behaviour families lack.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium
import numpy as np

from ..files import atomic_open
from .humanoid_controller import BalanceController, LqrWeights, knee_bend_offset

# Normalised observations are clipped: contact-force entries sit at zero most of the time, so a
# rare contact divides by a tiny std and would otherwise saturate every action at once.
OBS_CLIP = 10.0
# The golden ratio's fractional part: i * it mod 1 fills [0, 1) evenly for any count of episodes.
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def graded_noise_levels(n_episodes: int, max_noise: float, floor: float = 0.0) -> np.ndarray:
    """Per-episode action-noise levels spread evenly over ``[floor, max_noise)`` whatever the
    number of episodes (a low-discrepancy sequence, so a dataset built until a step budget is
    met needs no episode count up front, and a smaller dataset's levels are a prefix of a larger
    one's)."""
    fractions = (np.arange(n_episodes) * _GOLDEN) % 1.0
    return floor + (max_noise - floor) * fractions


# ------------------------------------------------------------------------- randomised PD control
@dataclass(frozen=True)
class PDRanges:
    """Where each episode's PD gains and target posture are drawn from (see module docstring)."""

    kp: tuple[float, float] = (0.5, 5.0)  # log-uniform, action units per radian
    damping_ratio: tuple[float, float] = (0.02, 0.2)  # kd = kp * uniform(ratio), per rad/s
    crouch: tuple[float, float] = (0.0, 0.2)  # hip flexion (rad); the knees bend twice as far
    posture_std: float = 0.1  # Gaussian offset of every joint's target (rad)


@dataclass
class PDController:
    """One episode's PD controller: ``controller(obs) -> action``."""

    kp: np.ndarray  # (act_dim,)
    kd: np.ndarray  # (act_dim,)
    target: np.ndarray  # (act_dim,) joint angles
    angle_index: np.ndarray  # (act_dim,) where each actuated joint's angle sits in the obs
    speed_index: np.ndarray  # (act_dim,) and its speed
    low: np.ndarray
    high: np.ndarray

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        q = obs[self.angle_index]
        dq = obs[self.speed_index]
        return np.clip(self.kp * (self.target - q) - self.kd * dq, self.low, self.high)


class RandomisedPD:
    """Draws per-episode ``PDController``s for a MuJoCo env whose observation starts with
    ``qpos[2:]`` and ``qvel`` (Humanoid, Ant, ...), every actuator driving one hinge joint."""

    def __init__(self, env: gymnasium.Env, ranges: PDRanges | None = None):
        self.ranges = ranges or PDRanges()
        base = env.unwrapped
        model = base.model
        if not getattr(base, "_exclude_current_positions_from_observation", False):
            raise ValueError("RandomisedPD expects observations without the root x, y")
        joints = model.actuator_trnid[:, 0]
        self.angle_index = model.jnt_qposadr[joints] - 2
        self.speed_index = (model.nq - 2) + model.jnt_dofadr[joints]
        self.low = env.action_space.low.astype(np.float64)
        self.high = env.action_space.high.astype(np.float64)
        names = [model.actuator(i).name for i in range(model.nu)]
        self._hips = np.array([i for i, n in enumerate(names) if n.endswith("hip_y")], dtype=int)
        self._knees = np.array([i for i, n in enumerate(names) if n.endswith("knee")], dtype=int)

    def draw(self, rng: np.random.Generator) -> PDController:
        r = self.ranges
        n = len(self.low)
        kp = np.exp(rng.uniform(np.log(r.kp[0]), np.log(r.kp[1]), n))
        kd = kp * rng.uniform(*r.damping_ratio, n)
        target = rng.normal(0.0, r.posture_std, n)
        crouch = rng.uniform(*r.crouch)
        # Humanoid's hips and knees flex toward negative angles.
        target[self._hips] -= crouch
        target[self._knees] -= 2.0 * crouch
        return PDController(kp, kd, target, self.angle_index, self.speed_index, self.low, self.high)


# --------------------------------------------------------------------------------- linear policy
@dataclass
class LinearPolicy:
    """``a = clip(W clip((s - mean) / std))``: what ARS trains, and what the collector rolls out."""

    weights: np.ndarray  # (act_dim, obs_dim)
    mean: np.ndarray  # (obs_dim,)
    std: np.ndarray  # (obs_dim,)
    low: np.ndarray  # (act_dim,)
    high: np.ndarray  # (act_dim,)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.act(self.weights, obs)

    def act(self, weights: np.ndarray, obs: np.ndarray) -> np.ndarray:
        x = np.clip((np.asarray(obs, dtype=np.float64) - self.mean) / self.std, -OBS_CLIP, OBS_CLIP)
        return np.clip(weights @ x, self.low, self.high)

    def save(self, path: str | os.PathLike, **meta: np.ndarray | str | float) -> None:
        """Write the policy (and ``meta``: plain arrays, strings, numbers) atomically."""
        with atomic_open(path) as f:
            np.savez(f, **asdict(self), **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[LinearPolicy, dict[str, np.ndarray]]:
        """The policy and its metadata; no pickle is ever run (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as f:
            policy = cls(**{k: f[k] for k in ("weights", "mean", "std", "low", "high")})
            meta = {k[len("meta_") :]: f[k] for k in f.files if k.startswith("meta_")}
        return policy, meta


class RunningStats:
    """Mean and std of every observation seen, by Chan et al.'s parallel update of Welford sums."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def update(self, batch: np.ndarray) -> None:
        n = len(batch)
        if n == 0:
            return
        mean = batch.mean(0)
        m2 = ((batch - mean) ** 2).sum(0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> np.ndarray:
        if self.count < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.m2 / self.count)
        # Entries that never moved (yet) are left unscaled rather than divided by ~0.
        return np.where(std < 1e-6, 1.0, std)


@dataclass(frozen=True)
class ArsConfig:
    """One ARS training run; every field is part of the policy's recipe."""

    iterations: int = 100
    directions: int = 16  # N: random directions per iteration (2N rollouts)
    top: int = 8  # b: directions kept for the update
    step_size: float = 0.02  # alpha
    exploration: float = 0.025  # nu: perturbation scale in normalised-observation units
    seed: int = 0
    # Subtracted from every step's reward during training only (the paper's survival-bonus
    # shift): without it Hopper settles on standing still for the healthy bonus.
    survival_shift: float = 0.0
    horizon: int | None = None  # training episodes end here (None: the env's own limit)


def ars_update(
    weights: np.ndarray,
    deltas: np.ndarray,
    returns_plus: np.ndarray,
    returns_minus: np.ndarray,
    top: int,
    step_size: float,
) -> np.ndarray:
    """One ARS V2-t step. ``deltas``: (N, *weights.shape) directions; ``returns_plus/minus``:
    (N,) returns of ``weights +/- nu * delta``. Keeps the ``top`` directions whose better return
    is highest and steps along their return-difference-weighted sum, scaled by the standard
    deviation of the kept returns (so the step size does not depend on the reward's scale)."""
    best = np.maximum(returns_plus, returns_minus)
    keep = np.argsort(-best, kind="stable")[:top]
    kept = np.concatenate([returns_plus[keep], returns_minus[keep]])
    sigma = kept.std()
    if sigma < 1e-8:  # every kept rollout scored the same: no direction to follow
        return weights
    diff = returns_plus[keep] - returns_minus[keep]
    step = np.tensordot(diff, deltas[keep], axes=1)
    return weights + step_size / (top * sigma) * step


def episode_return(
    env: gymnasium.Env,
    act: Callable[[np.ndarray], np.ndarray],
    seed: int,
    shift: float = 0.0,
    horizon: int | None = None,
) -> tuple[float, np.ndarray]:
    """Return (less ``shift`` per step) of one noise-free episode, cut at ``horizon`` steps, and
    the observations it visited."""
    obs, _ = env.reset(seed=seed)
    total, seen = 0.0, [obs]
    while True:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total += float(reward) - shift
        if terminated or truncated or len(seen) == horizon:
            return total, np.asarray(seen)
        seen.append(obs)


def _perturbed_returns(
    env: gymnasium.Env,
    policy: LinearPolicy,
    config: ArsConfig,
    deltas: np.ndarray,
    seeds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ARS iteration's 2N rollouts, each direction ``deltas[k]`` added and subtracted from
    the same reset ``seeds[k]``: the returns of both signs and every state visited."""
    plus, minus, visited = np.zeros(config.directions), np.zeros(config.directions), []
    for k in range(config.directions):
        for sign, out in ((1.0, plus), (-1.0, minus)):
            w = policy.weights + sign * config.exploration * deltas[k]
            out[k], seen = episode_return(
                env,
                lambda o, w=w: policy.act(w, o),
                int(seeds[k]),
                config.survival_shift,
                config.horizon,
            )
            visited.append(seen)
    return plus, minus, np.concatenate(visited)


def train_ars(
    env: gymnasium.Env,
    config: ArsConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[LinearPolicy, dict[str, np.ndarray]]:
    """Train a ``LinearPolicy`` on ``env``'s own reward by ARS V2-t (see module docstring).

    Returns the policy and its learning curve: per iteration the mean return of the 2N
    perturbed rollouts and the return of the unperturbed policy from one fixed reset, plus the
    environment steps used and the wall time.
    """
    rng = np.random.default_rng(config.seed)
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    stats = RunningStats(obs_dim)
    policy = LinearPolicy(
        weights=np.zeros((act_dim, obs_dim)),
        mean=np.zeros(obs_dim),
        std=np.ones(obs_dim),
        low=env.action_space.low.astype(np.float64),
        high=env.action_space.high.astype(np.float64),
    )
    mean_returns, policy_returns, steps = [], [], 0
    start = time.perf_counter()
    for it in range(config.iterations):
        deltas = rng.standard_normal((config.directions, act_dim, obs_dim))
        seeds = rng.integers(0, 2**31 - 1, config.directions)
        plus, minus, states = _perturbed_returns(env, policy, config, deltas, seeds)
        policy.weights = ars_update(
            policy.weights, deltas, plus, minus, config.top, config.step_size
        )
        steps += len(states)
        stats.update(states.astype(np.float64))
        policy.mean, policy.std = stats.mean.copy(), stats.std.copy()
        # The unperturbed policy from a reset no direction used, to show what training achieved.
        current, _ = episode_return(env, policy, seed=2**31 - 1)
        mean_returns.append(float(np.concatenate([plus, minus]).mean()))
        policy_returns.append(current)
        if log is not None and (it % 10 == 9 or it == config.iterations - 1):
            log(
                f"ARS iteration {it + 1}/{config.iterations}: perturbed mean return "
                f"{mean_returns[-1]:.1f}, policy return {current:.1f}, {steps} env steps, "
                f"{time.perf_counter() - start:.0f} s"
            )
    curve = {
        "mean_returns": np.asarray(mean_returns),
        "policy_returns": np.asarray(policy_returns),
        "env_steps": np.asarray(steps),
        "train_seconds": np.asarray(time.perf_counter() - start),
    }
    return policy, curve


# --------------------------------------------------------------------------- mixture of behaviours
MIXED_KINDS = ("balance", "pd", "ars", "random")


@dataclass(frozen=True)
class MixRanges:
    """How a mixed dataset's episodes are drawn (see module docstring); every field is part of
    the dataset's recipe."""

    # behaviour -> expected share of the episodes (normalised when drawn)
    shares: tuple[tuple[str, float], ...] = (
        ("balance", 0.4),
        ("pd", 0.25),
        ("ars", 0.25),
        ("random", 0.1),
    )
    # Knee-bending offset of the balance controller, uniform, and its action-noise std: at a
    # bend of 0.05 and noise 0.02 it falls after ~110 steps (return ~530), at 0.09 and 0.06
    # after ~50-70 (~250-350). Noise-free, or below a bend of ~0.05, it may stand all 1000 steps,
    # which this family leaves out: it is about short episodes. Noise above ~0.1 topples it
    # within ~40 steps whatever the bend, which would erase the skill it is here to show.
    balance_bend: tuple[float, float] = (0.05, 0.09)
    balance_noise: tuple[float, float] = (0.02, 0.06)
    ars_noise: tuple[float, float] = (0.0, 0.3)
    random_noise: tuple[float, float] = (0.2, 0.4)  # around a zero action
    lqr: LqrWeights = LqrWeights()  # the balance controller's design

    def draw_kind(self, rng: np.random.Generator) -> str:
        """The behaviour of an episode: the first draw from its generator."""
        kinds = [k for k, _ in self.shares]
        shares = np.array([w for _, w in self.shares], dtype=np.float64)
        return kinds[int(rng.choice(len(kinds), p=shares / shares.sum()))]


@dataclass
class EpisodePlan:
    """What plays one episode: ``rollout_episode(env, act, noise, rng, seed, offset)``."""

    kind: str
    act: Callable[[np.ndarray], np.ndarray]
    noise: float
    offset: np.ndarray | None = None


class MixedBehaviour:
    """Draws per-episode ``EpisodePlan``s of the mixture for Humanoid-v5. The balance controller
    is designed once (about a second); ``policy`` is the trained ARS policy."""

    def __init__(
        self,
        env: gymnasium.Env,
        ranges: MixRanges,
        pd: PDRanges,
        policy: LinearPolicy,
    ):
        unknown = {k for k, _ in ranges.shares} - set(MIXED_KINDS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}: use {', '.join(MIXED_KINDS)}")
        self.ranges = ranges
        self.pd = RandomisedPD(env, pd)
        self.policy = policy
        self.balance = BalanceController(weights=ranges.lqr)
        self.bend = knee_bend_offset(env, 1.0)  # per unit of bend
        zero = np.zeros(env.action_space.shape[0])
        self.zero = lambda obs: zero

    def draw(self, rng: np.random.Generator) -> EpisodePlan:
        r = self.ranges
        kind = r.draw_kind(rng)
        if kind == "balance":
            bend = rng.uniform(*r.balance_bend)
            return EpisodePlan(kind, self.balance, rng.uniform(*r.balance_noise), bend * self.bend)
        if kind == "pd":
            return EpisodePlan(kind, self.pd.draw(rng), 0.0)
        if kind == "ars":
            return EpisodePlan(kind, self.policy, rng.uniform(*r.ars_noise))
        return EpisodePlan(kind, self.zero, rng.uniform(*r.random_noise))
