import numpy as np
import pytest
from decision_transformer.envs import ENV_SPECS, make_env, parse_env_name


@pytest.mark.parametrize("name", sorted(ENV_SPECS))
def test_every_env_steps_on_gymnasium_mujoco(name):
    env = make_env(name)
    obs, _ = env.reset(seed=0)
    obs2, reward, term, trunc, _ = env.step(env.action_space.sample())
    assert obs.shape == env.observation_space.shape == obs2.shape
    assert np.isfinite(reward)
    assert env.spec.max_episode_steps == ENV_SPECS[name].max_ep_len
    env.close()


def test_humanoid_dims_and_bounds():
    env = make_env("humanoid-medium-v2")
    assert env.observation_space.shape == (348,) and env.action_space.shape == (17,)
    np.testing.assert_allclose(env.action_space.high, 0.4)


def test_d4rl_style_names():
    assert parse_env_name("humanoid-medium-v2") == ("humanoid", "medium")
    assert parse_env_name("halfcheetah-medium-replay-v2") == ("halfcheetah", "medium-replay")
    assert parse_env_name("walker2d") == ("walker2d", None)
    with pytest.raises(ValueError, match="known envs are hopper"):
        parse_env_name("pendulum-medium-v2")
