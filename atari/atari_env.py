"""Atari in ale-py with the DQN preprocessing the DQN-Replay data was recorded with.

``make_env`` gives 84x84 grayscale frames, 4 emulator frames per step with the last two
max-pooled, no sticky actions, up to 30 no-ops at reset, the game's minimal action set, and the
episode ending at game over only (losing a life is not terminal). Frames are stacked by
:class:`FrameStack` the way the dataset stacks them: zeros before the episode's first frame.
"""

from __future__ import annotations

from collections import deque

import _paths  # noqa: F401
import gymnasium as gym
import numpy as np
from decision_transformer.errors import ConfigError

# Random and human reference scores for the human-normalized score
# 100 * (R - random) / (human - random): the table used by DQN-family papers since van Hasselt et
# al. 2016 / Wang et al. 2016 (the Atari-100k games; see atari/README.md).
REFERENCE_SCORES = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "UpNDown": (533.4, 11693.2),
}

# The paper's evaluation targets (Chen et al. 2021, appendix; the original trainer's values).
PAPER_TARGETS = {"Breakout": 90, "Qbert": 14000, "Pong": 20, "Seaquest": 1150}

EPISODE_FRAMES = 108_000  # 30 minutes of play, ALE v5's default cap (27,000 agent steps)


# The paper's Table 1 metric, "gamer-normalized" 100 * (R - random) / (gamer - random) after
# Hafner et al.: its reference scores are the table above rounded to integers (Breakout 2 / 30,
# Qbert 164 / 13455, Pong -21 / 15, Seaquest 68 / 42055). Back-computed, see atari/README.md.
GAMER_SCORES = {g: (float(round(r)), float(round(h))) for g, (r, h) in REFERENCE_SCORES.items()}


def gamer_normalized(game: str, score: float) -> float | None:
    """The paper's metric (Table 1 of Chen et al. 2021), or None for a game without scores."""
    if game not in GAMER_SCORES:
        return None
    random, gamer = GAMER_SCORES[game]
    return 100.0 * (score - random) / (gamer - random)


def human_normalized(game: str, score: float) -> float | None:
    if game not in REFERENCE_SCORES:
        return None
    random, human = REFERENCE_SCORES[game]
    return 100.0 * (score - random) / (human - random)


def env_id(game: str) -> str:
    return f"ALE/{game}-v5"


def check_game(game: str) -> int:
    """Raise ConfigError unless ale-py has a ROM for ``game``; return its action count."""
    try:
        env = make_env(game)
    except ConfigError:
        raise
    n = env.action_space.n
    env.close()
    return n


def make_env(game: str, max_episode_steps: int | None = None) -> gym.Env:
    import ale_py

    # Keep ALE's banner and info lines off stderr: errors there are one line each.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gym.register_envs(ale_py)
    try:
        env = gym.make(
            env_id(game),
            frameskip=1,  # AtariPreprocessing skips (and max-pools) itself
            repeat_action_probability=0.0,
            full_action_space=False,
            max_num_frames_per_episode=EPISODE_FRAMES,
        )
    except gym.error.Error as e:
        raise ConfigError(
            f"no ALE game '{game}' ({type(e).__name__}); ale-py ships the ROMs, use the "
            "DQN-Replay spelling, e.g. Breakout, Qbert, Pong, Seaquest, MsPacman"
        ) from None
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=30,
        frame_skip=4,
        screen_size=84,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return env


class FrameStack:
    """The last 4 frames, zeros before the first: ``[4, 84, 84]`` uint8."""

    def __init__(self, first: np.ndarray):
        self.frames = deque([np.zeros_like(first)] * 3 + [first], maxlen=4)

    def push(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def get(self) -> np.ndarray:
        return np.stack(self.frames)
