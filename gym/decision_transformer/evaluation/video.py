"""A video of one evaluation episode, rendered offscreen with MuJoCo, the step and returns on it.

The episode is not played again by the model: evaluation records its actions through the
evaluators' ``on_step`` hook (:class:`EpisodeRecorder`) and :func:`render_episode` replays them in
a rendering copy of the env reset with the same seed. MuJoCo is deterministic, so the video is
the evaluated episode itself, whichever evaluator (batched or not) played it; the replayed
rewards are checked against the recorded ones.

Offscreen rendering needs an OpenGL backend: ``MUJOCO_GL=egl`` (set by evaluate.py when unset)
or ``osmesa``. Without a GPU, EGL is Mesa's software rasteriser (llvmpipe), where MuJoCo's
default 4x multisampling, shadows and reflections cost ~10x the frame rate; ``quality="auto"``
drops them there and keeps them on a GPU.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from ..envs import make_env

VIDEO_SUFFIXES = (".mp4", ".gif")


@dataclass
class EpisodeRecorder:
    """Collects what an evaluator's ``on_step`` hook reports, enough to replay the episode."""

    seed: int
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def __call__(self, action: np.ndarray, reward: float) -> None:
        self.actions.append(np.array(action, dtype=np.float32, copy=True))
        self.rewards.append(float(reward))


def check_video_path(path: str | Path) -> None:
    """Refuse an unsupported extension before any evaluation runs."""
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--video {path}: the file must end in {' or '.join(VIDEO_SUFFIXES)}")


def software_gl() -> bool:
    """Whether offscreen OpenGL is a software rasteriser (or cannot be asked)."""
    try:
        import mujoco
        from OpenGL import GL

        ctx = mujoco.GLContext(16, 16)
        ctx.make_current()
        try:
            name = (GL.glGetString(GL.GL_RENDERER) or b"").lower()
        finally:
            ctx.free()
    except Exception:  # any failure here only means: assume the slow case
        return True
    return any(s in name for s in (b"llvmpipe", b"softpipe", b"swrast", b"software"))


def make_render_env(env_name: str, fast: bool, width: int = 480, height: int = 480):
    env = make_env(env_name, render_mode="rgb_array", width=width, height=height)
    if fast:
        # Visual-only model fields, read when the GL context is made at the first render; the
        # physics is untouched.
        model = env.unwrapped.model
        model.vis.quality.offsamples = 0
        model.vis.quality.shadowsize = 0
        model.mat_reflectance[:] = 0
    return env


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


class Annotator:
    """Draws a few lines of text in a darkened box at the top left of each frame."""

    def __init__(self, height: int, widest_lines: list[str]):
        self.font = _font(max(12, height // 30))
        self.pad = max(4, height // 80)
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        boxes = [probe.textbbox((0, 0), line, font=self.font) for line in widest_lines]
        self.line_height = max(b[3] for b in boxes) + self.pad // 2
        # The box is sized once from the widest text it will hold, so it does not jitter.
        self.box_width = max(b[2] for b in boxes) + 2 * self.pad
        self.box_height = len(widest_lines) * self.line_height + 2 * self.pad

    def __call__(self, frame: np.ndarray, lines: list[str]) -> np.ndarray:
        out = frame.copy()
        h, w = min(self.box_height, out.shape[0]), min(self.box_width, out.shape[1])
        out[:h, :w] = (out[:h, :w] * 0.3).astype(np.uint8)
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(lines):
            xy = (self.pad, self.pad + i * self.line_height)
            draw.text(xy, line, fill=(255, 255, 255), font=self.font)
        return np.asarray(image)


class _GifWriter:
    """Pillow writes a GIF in one go at the end, so frames are kept, palettised (1 byte/pixel)."""

    def __init__(self, path: Path, fps: float):
        self.path = path
        # GIF delays are in 1/100 s and browsers slow anything under 2/100 s down to 10/100 s.
        self.duration_ms = max(20, 10 * round(100 / fps))
        self.frames: list[Image.Image] = []

    def append_data(self, frame: np.ndarray) -> None:
        image = Image.fromarray(frame)
        if self.frames:
            # One palette for the whole clip: no colour flicker between frames.
            self.frames.append(image.quantize(palette=self.frames[0], dither=Image.Dither.NONE))
        else:
            self.frames.append(image.quantize(colors=256, dither=Image.Dither.NONE))

    def close(self) -> None:
        first, *rest = self.frames
        first.save(
            self.path,
            save_all=True,
            append_images=rest,
            duration=self.duration_ms,
            loop=0,
            optimize=False,
        )


def _writer(path: Path, fps: float):
    if path.suffix.lower() == ".gif":
        return _GifWriter(path, fps)
    import imageio.v2 as imageio

    return imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", quality=7)


@dataclass(frozen=True)
class Caption:
    """What each frame of an episode's video says: a title, the step (out of ``max_steps``), the
    return so far and, given a ``target`` (raw units; None for BC), the return-to-go the model
    was conditioned on, which stays at the target in 'delayed' mode as in evaluation."""

    title: str = ""
    target: float | None = None
    mode: str = "normal"
    max_steps: int | None = None

    def lines(self, t: int, episode_return: float) -> list[str]:
        of = f"/{self.max_steps}" if self.max_steps else ""
        out = [self.title, f"step {t}{of}", f"return {episode_return:.1f}"]
        if self.target is not None:
            rtg = self.target if self.mode == "delayed" else self.target - episode_return
            out.append(f"return-to-go {rtg:.1f}")
        return out

    def widest(self, n: int) -> list[str]:
        """The widest lines an ``n``-step episode's frames can show: the text box is sized once
        from them, so it does not jitter."""
        of = f"/{self.max_steps}" if self.max_steps else ""
        out = [self.title, f"step {max(n, self.max_steps or 0)}{of}", f"return {-99999.9:.1f}"]
        if self.target is not None:
            out.append(f"return-to-go {-99999.9:.1f}")
        return out


def render_episode(
    env_name: str,
    record: EpisodeRecorder,
    path: str | Path,
    caption: Caption,
    quality: str = "auto",
    progress: bool = True,
) -> dict:
    """Replay ``record`` in a rendering env and write it to ``path`` (.mp4 or .gif).

    Frame 0 is the reset state, frame t the state after step t: ``len(record.actions) + 1``
    frames, each captioned by ``caption``. Returns what was written: frames, fps, render time,
    return.
    """
    path = Path(path)
    check_video_path(path)
    fast = quality == "fast" or (quality == "auto" and software_gl())
    env = make_render_env(env_name, fast)
    fps = float(env.metadata.get("render_fps") or 30)
    n = len(record.actions)
    writer = _writer(path, fps)
    # disable=None: a bar on a terminal, nothing in logs and captured output.
    bar = tqdm(
        total=n + 1, desc=f"video {path.name}", unit="frame", disable=None if progress else True
    )
    start = time.perf_counter()
    try:
        episode_return, diverged_at = _replay(env, record, caption, writer, bar)
    finally:
        bar.close()
        writer.close()
        env.close()
    seconds = time.perf_counter() - start
    if diverged_at is not None:
        print(
            f"warning: the rendered replay differs from the evaluated episode from step "
            f"{diverged_at} on (non-deterministic simulation?)",
            file=sys.stderr,
        )
    return {
        "path": str(path),
        "frames": n + 1,
        "fps": fps,
        "render_seconds": seconds,
        "render_fps": (n + 1) / seconds if seconds > 0 else float("inf"),
        "episode_return": episode_return,
        "episode_length": n,
        "seed": record.seed,
        "fast_rendering": fast,
    }


def _replay(
    env, record: EpisodeRecorder, caption: Caption, writer, bar
) -> tuple[float, int | None]:
    """Step ``env`` through the recorded actions, writing each captioned frame. Returns the
    replayed return and the first step whose reward differs from the recorded one (or None)."""
    n = len(record.actions)
    annotate = None
    episode_return = 0.0
    diverged_at = None
    env.reset(seed=record.seed)
    for t in range(n + 1):
        if t > 0:
            _, reward, *_ = env.step(record.actions[t - 1])
            if diverged_at is None and not math.isclose(
                reward, record.rewards[t - 1], rel_tol=1e-9, abs_tol=1e-9
            ):
                diverged_at = t
            episode_return += reward
        frame = env.render()
        if annotate is None:
            annotate = Annotator(frame.shape[0], caption.widest(n))
        writer.append_data(annotate(frame, caption.lines(t, episode_return)))
        bar.update(1)
    return episode_return, diverged_at
