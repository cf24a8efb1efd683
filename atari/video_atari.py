"""A video of one evaluation episode: the RGB screen beside the 84x84 frame the agent saw, with
the step, the score and the return-to-go the model was conditioned on written on it.

The model does not play the episode again: evaluation records its actions (``trace``) and
:func:`render_episode` replays them in a fresh environment reset with the episode's seed. ALE
without sticky actions is deterministic, so the replay is the evaluated episode; the replayed
score is checked against the evaluated one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from atari_env import make_env
from PIL import Image, ImageDraw, ImageFont

SUFFIXES = (".mp4", ".gif")
FPS = 15  # agent steps per second of video (4 emulator frames each: ~4x slower than the game)


def check_video_path(path: str | Path) -> None:
    if Path(path).suffix.lower() not in SUFFIXES:
        raise ValueError(f"--video {path}: the file must end in .mp4 or .gif")


def _panel(screen: np.ndarray, seen: np.ndarray, lines: list[str], font) -> np.ndarray:
    """[H, W, 3]: the 210x160 RGB screen at 2x, then the agent's 84x84 frame at 5x (420x420)."""
    left = screen.repeat(2, axis=0).repeat(2, axis=1)  # [420, 320, 3]
    right = np.repeat(seen.repeat(5, axis=0).repeat(5, axis=1)[..., None], 3, axis=2)
    canvas = np.concatenate([left, right], axis=1)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 200, 8 + 18 * len(lines)), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((6, 4 + 18 * i), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def render_traced_episode(cfg: dict, trace: list, returns: list[float], path: str | Path) -> dict:
    """Episode 0 of an evaluation that kept its ``trace`` ((episode, step, action) rows), rendered
    to ``path``: the evaluation's seed, target and actions, checked against its first return."""
    actions = [a for ep, _, a in sorted(trace) if ep == 0]
    target = None if cfg["model_type"] == "naive" else cfg["eval_target"]
    video = render_episode(cfg["game"], cfg["seed"], actions, path, target, returns[0])
    print(f"video of episode 0 ({video['frames']} frames): {path}")
    return video


def render_episode(
    game: str,
    seed: int,
    actions: list[int],
    path: str | Path,
    target: float | None,
    expected_return: float | None = None,
) -> dict:
    """Replay ``actions`` from ``env.reset(seed=seed)`` and write ``len(actions) + 1`` frames
    (the reset state, then the state after each step) to ``path`` (.mp4 or .gif)."""
    path = Path(path)
    check_video_path(path)
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    env = make_env(game)
    seen, _ = env.reset(seed=seed)
    ale = env.unwrapped.ale
    score, frames = 0.0, []

    def frame(t: int) -> np.ndarray:
        lines = [f"{game}  step {t}", f"score {score:g}"]
        if target is not None:
            lines.append(f"return-to-go {target - score:g}")
        return _panel(ale.getScreenRGB(), seen, lines, font)

    frames.append(frame(0))
    for t, a in enumerate(actions, 1):
        seen, r, *_ = env.step(int(a))
        score += float(r)
        frames.append(frame(t))
    env.close()
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in frames]
        palette = images[0].quantize(colors=256)
        images = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
        images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // FPS, loop=0)
    else:
        import imageio.v2 as imageio

        # 740x420 is even, as yuv420p needs; no rescaling to 16-pixel blocks.
        with imageio.get_writer(
            path, format="FFMPEG", fps=FPS, codec="libx264", macro_block_size=2
        ) as w:
            for f in frames:
                w.append_data(f)
    if expected_return is not None and score != expected_return:
        print(
            f"warning: the replayed episode scored {score:g}, the evaluated one "
            f"{expected_return:g} (non-deterministic emulation?)",
            file=sys.stderr,
        )
    return {"path": str(path), "frames": len(frames), "return": score, "seed": seed}
