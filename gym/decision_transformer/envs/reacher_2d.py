"""The reacher2d task of the original Decision Transformer experiments, on gymnasium + mujoco.

A two-link planar arm (links 0.6 and 0.4 long, no gravity) must bring its fingertip onto a target
placed at a random point 0.5 to 1.0 from the shoulder. The reward is sparse: 1 for every step the
fingertip is within 0.1 of the target in L1 distance, else 0. The task never terminates; the
100-step limit comes from the registration in :mod:`decision_transformer.envs`.

Observation (12 numbers): sin and cos of both joint angles, joint velocities times ``dt``,
fingertip xy, target xy and fingertip minus target xy, the same layout as the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

XML_PATH = Path(__file__).resolve().parent / "assets" / "reacher_2d.xml"
FRAME_SKIP = 15
SUCCESS_L1_DISTANCE = 0.1
GOAL_RADIUS = (0.5, 1.0)
OBS_DIM = 12

# Looking straight down on the whole reach (radius 1.0) keeps arm and target in frame.
_TOP_DOWN_CAMERA = {"distance": 3.2, "elevation": -90.0, "azimuth": 90.0, "lookat": np.zeros(3)}


class Reacher2dEnv(MujocoEnv):
    """Sparse-reward planar reaching with a random goal per episode."""

    # dt = 0.01 s x 15 substeps = 0.15 s, so ~7 frames per second of simulated time.
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 7}

    def __init__(self, render_mode: str | None = None, width: int = 480, height: int = 480):
        observation_space = spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float64)
        super().__init__(
            str(XML_PATH),
            FRAME_SKIP,
            observation_space=observation_space,
            render_mode=render_mode,
            width=width,
            height=height,
            default_camera_config=_TOP_DOWN_CAMERA,
        )
        self._fingertip = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
        target_body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "target")
        self._target_mocap = int(self.model.body_mocapid[target_body])
        self.goal = np.array([0.5, 0.5])

    def _fingertip_xy(self) -> np.ndarray:
        return self.data.site_xpos[self._fingertip][:2].copy()

    def _target_xy(self) -> np.ndarray:
        return self.data.mocap_pos[self._target_mocap][:2].copy()

    def _get_obs(self) -> np.ndarray:
        theta = self.data.qpos.ravel()
        tip, target = self._fingertip_xy(), self._target_xy()
        velocity = self.dt * self.data.qvel.ravel()
        return np.concatenate([np.sin(theta), np.cos(theta), velocity, tip, target, tip - target])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.do_simulation(action, self.frame_skip)
        distance = float(np.abs(self._fingertip_xy() - self._target_xy()).sum())
        reward = 1.0 if distance < SUCCESS_L1_DISTANCE else 0.0
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, {"distance_l1": distance}

    def _sample_goal(self) -> np.ndarray:
        # Rejection sampling from the square keeps the goal uniform over the annulus' area.
        while True:
            goal = self.np_random.uniform(-1.5, 1.5, size=2)
            if GOAL_RADIUS[0] <= np.linalg.norm(goal) <= GOAL_RADIUS[1]:
                return goal

    def reset_model(self) -> np.ndarray:
        qpos = self.np_random.uniform(-2.0, 2.0, size=self.model.nq)
        qvel = np.zeros(self.model.nv)
        self.goal = self._sample_goal()
        self.data.mocap_pos[self._target_mocap][:2] = self.goal
        self.set_state(qpos, qvel)  # runs mj_forward, so site and mocap positions are current
        return self._get_obs()
