"""A standing-balance controller for gymnasium's ``Humanoid-v5`` and the recipe that turns it into
the offline ``humanoid-collected-v2`` dataset, made from the real simulator with no download.

The controller
    Humanoid-v5 pays 5 per step while the torso stays between 1.0 and 2.0 m, so staying upright
    for the full 1000 steps is worth ~5000. Its feet are spheres: it stands on two points and has
    no ankles, so it cannot stand still passively and must balance actively. ``BalanceController``
    is a linear-quadratic regulator around a slightly crouched stance:

    1. it finds the stance's equilibrium (height and lean such that the feet carry the weight and
       the centre of mass sits over them, plus the motor commands that hold it there) on the
       forward simulator itself;
    2. it linearises one environment step (5 physics substeps at the held command) by finite
       differences and solves the discrete Riccati equation for the feedback gain ``K``;
    3. it acts with ``a = a_eq - K (x - x_eq)`` clipped to the action box, where ``x`` is the
       joint-space state read straight from the observation (``qpos[2:]`` and ``qvel`` are its
       first 45 entries).

    Two choices make it survive the reset, which drops the body ~0.1 m onto straight knees:
    torso height and vertical speed are not fed back (while falling they say nothing about
    balance), and arm motion is heavily penalised (otherwise the regulator swings the arms as
    reaction wheels, which run into their joint limits). Contact is linearised with MuJoCo's
    Newton solver: Humanoid-v5 simulates with 50 PGS iterations, whose warm-start-dependent
    answers make finite differences useless, while the gain designed on the converged contact
    model works on the PGS simulation unchanged. Noise-free it stands the whole 1000 steps from
    every reset tried (return ~4940).

The dataset
    Episode ``i`` rolls the controller out from ``env.reset(seed=seed + i)`` with two per-episode
    settings that rise together across the episodes: independent Gaussian action noise of
    standard deviation ``noise_levels(n, max_noise)[i]`` (from 35% of ``max_noise`` to all of it)
    and a constant knee-bending offset ``knee_bends(n, max_bend)[i]`` (from none to all of
    ``max_bend``) subtracted from both knee commands, then the action is clipped. The quietest,
    straightest episodes stand for all 1000 steps; the offset makes the others sink into a crouch
    and fall, the sooner the larger it is (noise-free: an offset up to 0.04 still stands, 0.05
    falls after ~250 steps, 0.1 after ~75, 0.15 after ~35), and the noise spreads the returns
    around that.

    Why both. With noise alone the action an episode takes in a state is on average the
    controller's whatever its return, so a return-conditioned model has nothing to condition on:
    on 1000 such episodes a Decision Transformer learned the noise-free controller and stood for
    1000 steps at every target return, low ones included; on 150 it seemed to condition, but by
    memorising each episode's noise (its training loss fell below the noise's variance while its
    returns fell). The offset gives lower returns a different *mean* behaviour, which a model can
    learn from many episodes and reproduce when asked for a low return, while the best episodes
    remain a near-linear function of the observation that it can reproduce when asked for a high
    one. Many episodes (1000, ~100k steps) keep a small transformer from memorising them.

Remaking it
    From ``gym/``: ``python data/collect_dataset.py --env humanoid --out data`` (add
    ``--overwrite`` to replace an existing file; ``--episodes``, ``--noise``, ``--knee_bend`` and
    ``--seed`` change the recipe). The same seed gives the same file on the same mujoco build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium
import mujoco
import numpy as np

HUMANOID_ENV_ID = "Humanoid-v5"

# Knees bent a little give the legs room to absorb the landing after reset; the hips fold half as
# far so the shins stay roughly vertical and the feet stay under the pelvis.
DEFAULT_STANCE: dict[str, float] = {
    "right_knee": -0.4,
    "left_knee": -0.4,
    "right_hip_y": -0.2,
    "left_hip_y": -0.2,
}

DEFAULT_MAX_NOISE = 0.15
DEFAULT_MAX_KNEE_BEND = 0.15
KNEE_ACTUATORS = ("right_knee", "left_knee")


@dataclass(frozen=True)
class LqrWeights:
    """Diagonal LQR costs; only their ratios matter. Tuned by searching for noise tolerance."""

    tilt: float = 50.0  # root orientation error
    joints: float = 5.0  # abdomen and leg joint angles
    arms: float = 400.0  # arm joint angles (see module docstring: no reaction-wheel arms)
    velocity: float = 0.1  # every velocity
    effort: float = 2.0  # abdomen and leg motors
    arm_effort: float = 40.0  # arm motors


@dataclass
class _Equilibrium:
    qpos: np.ndarray
    ctrl: np.ndarray


@dataclass
class BalanceController:
    """Deterministic LQR balance policy: ``controller(obs) -> action`` for Humanoid-v5.

    Construction builds its own private Humanoid model (about two seconds of linearisation and
    Riccati iteration) and never touches the environment being controlled.
    """

    stance: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STANCE))
    weights: LqrWeights = field(default_factory=LqrWeights)
    env_id: str = HUMANOID_ENV_ID

    def __post_init__(self) -> None:
        env = gymnasium.make(self.env_id)
        base = env.unwrapped
        if not getattr(base, "_exclude_current_positions_from_observation", True):
            raise ValueError("BalanceController expects observations without the root x, y")
        self._model = base.model
        self._data = mujoco.MjData(self._model)
        self._frame_skip = int(base.frame_skip)
        self.action_low = env.action_space.low.astype(np.float64)
        self.action_high = env.action_space.high.astype(np.float64)
        env.close()
        m = self._model
        # Linearisation needs a contact solver that converges; this model is ours alone.
        m.opt.solver = mujoco.mjtSolver.mjSOL_NEWTON
        m.opt.iterations = 100
        m.opt.tolerance = 1e-12
        self._warmstart = np.zeros(m.nv)
        eq = self._find_equilibrium()
        self.qpos_eq, self.ctrl_eq = eq.qpos, eq.ctrl
        self.gain = self._lqr_gain(eq)
        self._qpos = self.qpos_eq.copy()
        self._err = np.zeros(m.nv)

    # ----------------------------------------------------------------------------- acting
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        m = self._model
        obs = np.asarray(obs, dtype=np.float64)
        self._qpos[:2] = self.qpos_eq[:2]  # x, y are not observed and do not matter
        self._qpos[2:] = obs[: m.nq - 2]
        self._qpos[3:7] /= np.linalg.norm(self._qpos[3:7])  # stored observations are float32
        qvel = obs[m.nq - 2 : m.nq - 2 + m.nv]
        mujoco.mj_differentiatePos(m, self._err, 1.0, self.qpos_eq, self._qpos)
        action = self.ctrl_eq - self.gain[:, : m.nv] @ self._err - self.gain[:, m.nv :] @ qvel
        return np.clip(action, self.action_low, self.action_high)

    # ----------------------------------------------------------------------------- design
    def _joint_qpos_index(self, name: str) -> int:
        joint = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if joint < 0:
            raise ValueError(f"no joint named '{name}' in {self.env_id}")
        return int(self._model.jnt_qposadr[joint])

    def _pose(self, height: float, pitch: float, roll: float) -> np.ndarray:
        qpos = self._model.qpos0.copy()
        for name, angle in self.stance.items():
            qpos[self._joint_qpos_index(name)] = angle
        qpos[2] += height
        pitch_q = np.array([np.cos(pitch / 2), 0.0, np.sin(pitch / 2), 0.0])
        roll_q = np.array([np.cos(roll / 2), np.sin(roll / 2), 0.0, 0.0])
        mujoco.mju_mulQuat(qpos[3:7], pitch_q, roll_q)
        return qpos

    def _inverse_root_force(self, qpos: np.ndarray) -> np.ndarray:
        """Force the free joint would need to hold ``qpos`` still: zero at an equilibrium."""
        d = self._data
        d.qpos[:] = qpos
        d.qvel[:] = 0.0
        d.qacc[:] = 0.0
        mujoco.mj_inverse(self._model, d)
        return d.qfrc_inverse.copy()

    def _step(self, qpos: np.ndarray, qvel: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        """One environment step (``frame_skip`` substeps at a held command) from a given state;
        returns the state as ``[qpos, qvel]`` relative to nothing (callers difference it)."""
        m, d = self._model, self._data
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        d.ctrl[:] = ctrl
        d.qacc_warmstart[:] = self._warmstart
        mujoco.mj_forward(m, d)
        for _ in range(self._frame_skip):
            mujoco.mj_step(m, d)
        return np.concatenate([d.qpos, d.qvel])

    def _find_equilibrium(self) -> _Equilibrium:
        m = self._model
        height, pitch, roll = 0.0, 0.0, 0.0
        for _ in range(8):
            # Vertical root force falls monotonically as the body is lowered into the floor:
            # bisect for the height where the contacts carry exactly the weight.
            lo, hi = -0.5, 0.1
            for _ in range(50):
                mid = 0.5 * (lo + hi)
                if self._inverse_root_force(self._pose(mid, pitch, roll))[2] > 0.0:
                    hi = mid
                else:
                    lo = mid
            height = 0.5 * (lo + hi)
            # Then lean the body (about the feet) until gravity exerts no pitch or roll torque.
            base = self._inverse_root_force(self._pose(height, pitch, roll))[[4, 3]]
            jac = np.zeros((2, 2))
            for j, delta in enumerate(np.eye(2) * 1e-5):
                moved = self._pose(height, pitch + delta[0], roll + delta[1])
                jac[:, j] = (self._inverse_root_force(moved)[[4, 3]] - base) / 1e-5
            pitch, roll = np.array([pitch, roll]) - np.linalg.solve(jac, base)

        # The joint torques inverse dynamics asks for become the holding command.
        qpos = self._pose(height, pitch, roll)
        joint_force = self._inverse_root_force(qpos)
        ctrl = np.zeros(m.nu)
        for i in range(m.nu):
            dof = m.jnt_dofadr[m.actuator_trnid[i, 0]]
            ctrl[i] = joint_force[dof] / m.actuator_gear[i, 0]

        # Polish on the forward simulator: the command and lean that leave the body at rest
        # after one full environment step (inverse and forward contact models differ slightly).
        params = np.array([height, pitch, roll])
        zero_vel = np.zeros(m.nv)
        for _ in range(6):
            self._step(self._pose(*params), zero_vel, ctrl)
            self._warmstart = self._data.qacc_warmstart.copy()
            residual = self._step(self._pose(*params), zero_vel, ctrl)[m.nq :]
            jac = np.zeros((m.nv, 3 + m.nu))
            for j in range(3 + m.nu):
                p, c = params.copy(), ctrl.copy()
                if j < 3:
                    p[j] += 1e-6
                else:
                    c[j - 3] += 1e-6
                jac[:, j] = (self._step(self._pose(*p), zero_vel, c)[m.nq :] - residual) / 1e-6
            update = np.linalg.lstsq(jac, -residual, rcond=None)[0]
            params += update[:3]
            ctrl += update[3:]
        return _Equilibrium(qpos=self._pose(*params), ctrl=ctrl)

    def _linearise(self, eq: _Equilibrium) -> tuple[np.ndarray, np.ndarray]:
        """Finite-difference ``A``, ``B`` of one environment step in tangent coordinates."""
        m = self._model
        nx = 2 * m.nv
        eps = 1e-6

        def tangent_step(dx: np.ndarray, du: np.ndarray) -> np.ndarray:
            qpos = eq.qpos.copy()
            mujoco.mj_integratePos(m, qpos, dx[: m.nv], 1.0)
            after = self._step(qpos, dx[m.nv :], eq.ctrl + du)
            dq = np.zeros(m.nv)
            mujoco.mj_differentiatePos(m, dq, 1.0, eq.qpos, after[: m.nq])
            return np.concatenate([dq, after[m.nq :]])

        a = np.zeros((nx, nx))
        b = np.zeros((nx, m.nu))
        no_u = np.zeros(m.nu)
        for j, e in enumerate(np.eye(nx) * eps):
            a[:, j] = (tangent_step(e, no_u) - tangent_step(-e, no_u)) / (2 * eps)
        no_x = np.zeros(nx)
        for j, e in enumerate(np.eye(m.nu) * eps):
            b[:, j] = (tangent_step(no_x, e) - tangent_step(no_x, -e)) / (2 * eps)
        return a, b

    def _lqr_gain(self, eq: _Equilibrium) -> np.ndarray:
        m = self._model
        nv = m.nv
        w = self.weights
        a, b = self._linearise(eq)
        # Root x, y are unobserved and physically irrelevant (the floor is uniform), so they are
        # left out of the regulator altogether.
        keep = np.array([i for i in range(2 * nv) if i not in (0, 1)])
        a, b = a[np.ix_(keep, keep)], b[keep]

        arm_dofs = [m.jnt_dofadr[m.actuator_trnid[i, 0]] for i in range(m.nu) if i >= 11]
        state_cost = np.full(2 * nv, w.velocity)
        state_cost[:nv] = w.joints
        state_cost[2] = 1.0  # height: its gain column is dropped below anyway
        state_cost[3:6] = w.tilt
        state_cost[arm_dofs] = w.arms
        effort_cost = np.full(m.nu, w.effort)
        effort_cost[11:] = w.arm_effort
        q, r = np.diag(state_cost[keep]), np.diag(effort_cost)

        # Value iteration on the Riccati equation. Yaw is barely controllable through friction,
        # so P keeps growing along it; the gain converges regardless, and that is what we need.
        p = q.copy()
        gain = np.zeros((m.nu, len(keep)))
        for it in range(20000):
            new_gain = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
            p = q + a.T @ p @ (a - b @ new_gain)
            converged = np.abs(new_gain - gain).max() < 1e-10 * max(np.abs(new_gain).max(), 1.0)
            gain = new_gain
            if converged and it > 10:
                break

        full = np.zeros((m.nu, 2 * nv))
        full[:, keep] = gain
        # Height and vertical speed are not fed back: during the drop after reset they are far
        # from the stance's values while saying nothing about balance.
        full[:, 2] = 0.0
        full[:, nv + 2] = 0.0
        return full


def _rising(n_episodes: int, first: float, last: float) -> np.ndarray:
    """``n_episodes`` values rising evenly from ``first`` to ``last``; a lone episode gets
    ``last``."""
    if n_episodes < 1:
        raise ValueError("need at least one episode")
    if n_episodes == 1:
        return np.array([last])
    return np.linspace(first, last, n_episodes)


def noise_levels(n_episodes: int, max_noise: float = DEFAULT_MAX_NOISE) -> np.ndarray:
    """Per-episode action-noise standard deviations, rising evenly from 35% of ``max_noise``.

    The floor keeps the noise-free-like episodes few: the controller shrugs off noise below
    ~0.04, so a schedule starting at zero would fill the top of the return distribution with
    near-identical full-length episodes instead of a spread.
    """
    return max_noise * _rising(n_episodes, 0.35, 1.0)


def knee_bends(n_episodes: int, max_bend: float = DEFAULT_MAX_KNEE_BEND) -> np.ndarray:
    """Per-episode knee-bending offsets, rising evenly from none to ``max_bend``."""
    return _rising(n_episodes, 0.0, max_bend)


def knee_bend_offset(env: gymnasium.Env, bend: float) -> np.ndarray:
    """The action offset that bends both knees by ``bend`` (Humanoid's knee joints flex toward
    negative angles, so the offset is negative on the two knee motors, zero elsewhere)."""
    model = env.unwrapped.model
    offset = np.zeros(model.nu)
    for name in KNEE_ACTUATORS:
        index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
        if index < 0:
            raise ValueError(f"no actuator named '{name}': knee bending is for Humanoid only")
        offset[index] = -bend
    return offset


def rollout_episode(
    env: gymnasium.Env,
    policy: Callable[[np.ndarray], np.ndarray],
    noise_std: float,
    rng: np.random.Generator,
    seed: int | None = None,
    offset: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Run one episode of ``policy`` plus a constant ``offset`` and Gaussian action noise; return
    it in the project's trajectory format (``observations``, ``next_observations``, ``actions``,
    ``rewards``, ``terminals``, ``timeouts``)."""
    low, high = env.action_space.low, env.action_space.high
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, terminals, timeouts = [], [], [], [], []
    next_observations = []
    while True:
        action = np.asarray(policy(obs), dtype=np.float64)
        if offset is not None:
            action = action + offset
        if noise_std > 0.0:
            action = action + noise_std * rng.standard_normal(action.shape)
        action = np.clip(action, low, high)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        next_observations.append(next_obs)
        actions.append(action)
        rewards.append(reward)
        terminals.append(terminated)
        timeouts.append(truncated and not terminated)
        obs = next_obs
        if terminated or truncated:
            break
    return {
        "observations": np.asarray(observations, dtype=np.float32),
        "next_observations": np.asarray(next_observations, dtype=np.float32),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "terminals": np.asarray(terminals, dtype=bool),
        "timeouts": np.asarray(timeouts, dtype=bool),
    }
