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


def test_halfcheetah_builds_quietly_and_other_mujoco_warnings_still_print(tmp_path):
    """In a user's process (not this one: conftest routes MuJoCo warnings to pytest), building
    HalfCheetah prints nothing and leaves no MUJOCO_LOG.TXT, while other warnings still print."""
    import subprocess
    import sys

    from cli import GYM_DIR, script_env

    code = """
import mujoco
from decision_transformer.envs import make_env
make_env("halfcheetah").close()  # gymnasium's XML uses an attribute MuJoCo 4 deprecates
model = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><body><joint type="slide"/><geom size="1"/></body></worldbody></mujoco>'
)
data = mujoco.MjData(model)
data.qfrc_applied[0] = float("nan")
mujoco.mj_step(model, data)
"""
    env = script_env() | {"PYTHONPATH": str(GYM_DIR)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "settotalmass" not in out.stdout + out.stderr
    assert "WARNING: Nan, Inf or huge value in QACC" in out.stdout
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
