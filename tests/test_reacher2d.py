"""reacher2d on the real MuJoCo simulator: layout, reset distribution, reward, time limit."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from decision_transformer.envs import make_env
from decision_transformer.envs.reacher_2d import OBS_DIM, Reacher2dEnv


@pytest.fixture
def env():
    env = make_env("reacher2d")
    yield env
    env.close()


def _place(env, qpos, goal) -> np.ndarray:
    """Put the arm at ``qpos`` (at rest) and the target at ``goal``; return the observation."""
    base: Reacher2dEnv = env.unwrapped
    base.data.mocap_pos[base._target_mocap][:2] = goal
    base.set_state(np.asarray(qpos, dtype=float), np.zeros(2))
    return base._get_obs()


def _tip_for(qpos) -> np.ndarray:
    # Forward kinematics from the task's link lengths, independent of the model file.
    a, b = qpos
    return np.array([0.6 * np.cos(a) + 0.4 * np.cos(a + b), 0.6 * np.sin(a) + 0.4 * np.sin(a + b)])


def test_spaces_and_model(env):
    base = env.unwrapped
    assert env.observation_space.shape == (OBS_DIM,) == (12,)
    assert env.action_space.shape == (2,)
    np.testing.assert_array_equal(env.action_space.low, [-1, -1])
    np.testing.assert_array_equal(env.action_space.high, [1, 1])
    m = base.model
    np.testing.assert_array_equal(m.opt.gravity, [0, 0, 0])
    assert m.opt.timestep == pytest.approx(0.01) and base.frame_skip == 15
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    np.testing.assert_allclose(m.jnt_range[1], [-2.0, 3.5])
    assert not m.jnt_limited[0]
    np.testing.assert_allclose(m.dof_damping, [1, 1])
    np.testing.assert_allclose(m.dof_armature, [0.05, 0.05])
    np.testing.assert_allclose(m.actuator_gear[:, 0], [1, 1])


def test_reset_distribution_and_observation_layout(env):
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        base = env.unwrapped
        assert obs.shape == (12,)
        qpos = base.data.qpos
        assert np.all(np.abs(qpos) <= 2.0) and np.all(base.data.qvel == 0)
        assert 0.5 <= np.linalg.norm(base.goal) <= 1.0
        np.testing.assert_allclose(obs[0:2], np.sin(qpos))
        np.testing.assert_allclose(obs[2:4], np.cos(qpos))
        np.testing.assert_allclose(obs[4:6], 0.0)
        np.testing.assert_allclose(obs[6:8], _tip_for(qpos), atol=1e-9)
        np.testing.assert_allclose(obs[8:10], base.goal)
        np.testing.assert_allclose(obs[10:12], obs[6:8] - obs[8:10])
    # Different seeds give different goals: the target really is random.
    goals = {tuple(np.round(env.reset(seed=s)[0][8:10], 6)) for s in range(5)}
    assert len(goals) == 5


def test_reward_is_one_only_within_l1_distance_point_one(env):
    env.reset(seed=0)
    qpos = np.array([0.3, 1.1])
    tip = _tip_for(qpos)
    # Zero gravity and zero velocity: with no torque the arm stays where it was put.
    for offset, expected in [
        ((0.0, 0.0), 1.0),
        ((0.05, 0.04), 1.0),
        ((0.06, 0.06), 0.0),
        ((0.3, 0.0), 0.0),
    ]:
        _place(env, qpos, tip + np.array(offset))
        obs, reward, terminated, truncated, info = env.step(np.zeros(2))
        assert reward == expected, (offset, info)
        assert not terminated and not truncated
        np.testing.assert_allclose(obs[6:8], tip, atol=1e-9)


def test_never_terminates_and_truncates_at_100_steps(env):
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for step in range(1, 101):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, size=2))
        assert not terminated
        assert truncated == (step == 100)


def test_a_reaching_controller_collects_reward(env):
    """Inverse kinematics + PD control reaches the target: the task is solvable and rewarded."""
    total = 0.0
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        gx, gy = obs[8:10]
        r = np.hypot(gx, gy)
        elbow = np.arccos(np.clip((r**2 - 0.6**2 - 0.4**2) / (2 * 0.6 * 0.4), -1, 1))
        shoulder = np.arctan2(gy, gx) - np.arctan2(0.4 * np.sin(elbow), 0.6 + 0.4 * np.cos(elbow))
        target = np.array([shoulder, elbow])
        for _ in range(100):
            q = np.arctan2(obs[0:2], obs[2:4])
            error = (target - q + np.pi) % (2 * np.pi) - np.pi
            velocity = obs[4:6] / env.unwrapped.dt
            obs, reward, _, truncated, _ = env.step(np.clip(4 * error - velocity, -1, 1))
            total += reward
            if truncated:
                break
    assert total >= 150  # most of the 300 steps spent on target


def test_renders_rgb_array():
    env = make_env("reacher2d", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    env.close()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 5  # not a blank image
    # The red target is in the picture.
    red = (frame[..., 0] > 180) & (frame[..., 1] < 90) & (frame[..., 2] < 90)
    assert red.sum() > 20
