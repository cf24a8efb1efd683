"""Sample the DT training set from DQN-Replay buffers, or write a small replay from ALE play.

Sampling follows the original: pick a random buffer among the last ``num_buffers``, take the next
``trajectories_per_buffer`` whole trajectories from where the last visit to it stopped, repeat
until ``num_steps`` transitions are in. Only the first 100,000 rows of a buffer are read (the
original's ``replay_capacity``). The plan is made from the terminal flags alone, then each
observation file is streamed once keeping only the planned rows, so memory is the sampled frames.

    python create_dataset.py --collect --game Breakout --out ./dqn_replay   # a small local replay
    python create_dataset.py --game Breakout --data_dir_prefix ./dqn_replay --num_steps 20000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import _paths  # noqa: F401
import dqn_replay as fmt
import numpy as np
from decision_transformer.errors import DatasetError, UserError
from decision_transformer.run.config import ConfigError
from decision_transformer.run.errors import OneLineParser, report
from decision_transformer.run.paths import check_output_dir

NUM_CKPTS = 50  # buffers per run in DQN-Replay: checkpoints 0..49
ROWS_PER_BUFFER = 100_000  # the original read each buffer with replay_capacity=100000
RUN = "1"  # the original always reads run 1 of the five
CACHE_VERSION = 1


@dataclass
class AtariDataset:
    frames: np.ndarray  # [N, 84, 84] uint8 single frames, trajectories back to back
    actions: np.ndarray  # [N] int64
    rewards: np.ndarray  # [N] float32 as stored (clipped by the recording agent)
    rtgs: np.ndarray  # [N] float32 return-to-go within the trajectory
    timesteps: np.ndarray  # [N] int64 step index within the trajectory
    starts: np.ndarray  # [E] int64 first row of each trajectory; it ends where the next starts

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def ends(self) -> np.ndarray:
        return np.append(self.starts[1:], len(self))

    def returns(self) -> np.ndarray:
        return self.rtgs[self.starts]

    def stack(self, i: int) -> np.ndarray:
        """The ``[4, 84, 84]`` frame stack of row ``i``, zeros before its trajectory's start."""
        s = self.starts[np.searchsorted(self.starts, i, side="right") - 1]
        out = np.zeros((4, *fmt.FRAME_SHAPE), dtype=np.uint8)
        lo = max(s, i - 3)
        out[4 - (i + 1 - lo) :] = self.frames[lo : i + 1]
        return out


def replay_dir(prefix: str, game: str, run: str = RUN) -> Path:
    # os.path.join, not '+': the original silently found nothing for a prefix without its slash.
    return Path(os.path.join(prefix, game, run, "replay_logs"))


def collect_hint(prefix: str, game: str) -> str:
    return f"python create_dataset.py --collect --game {game} --out {prefix.rstrip('/') or '.'}"


def find_buffers(prefix: str, game: str, num_buffers: int) -> tuple[Path, list[int]]:
    """The checkpoints among the last ``num_buffers`` whose four store files all exist."""
    if not 1 <= num_buffers <= NUM_CKPTS:
        raise ConfigError(f"--num_buffers must be in 1..{NUM_CKPTS}, got {num_buffers}")
    d = replay_dir(prefix, game)
    found = []
    for ckpt in range(NUM_CKPTS - num_buffers, NUM_CKPTS):
        paths = [fmt.store_path(d, s, ckpt) for s in fmt.STORES]
        present = [p.is_file() for p in paths]
        if all(present):
            found.append(ckpt)
        elif any(present):
            missing = paths[present.index(False)]
            raise DatasetError(f"replay checkpoint {ckpt} is incomplete: {missing} is missing")
    if not found:
        looked = fmt.store_path(d, "observation", NUM_CKPTS - 1)
        raise DatasetError(
            f"no DQN-Replay buffers for {game} (looked for e.g. {looked}); download them "
            f"(gsutil -m cp -R gs://atari-replay-datasets/dqn/{game} {prefix}) or make a small "
            f"one offline: {collect_hint(prefix, game)}"
        )
    return d, found


def _buffer_rows(d: Path, ckpt: int) -> int:
    """Rows usable in one buffer, after checking every store's dtype and shape."""
    counts = {s: fmt.check_store(fmt.store_path(d, s, ckpt), s) for s in fmt.STORES}
    if len(set(counts.values())) != 1:
        raise DatasetError(f"replay checkpoint {ckpt} in {d} has stores of unequal length {counts}")
    rows = counts["observation"]
    if fmt.count_path(d, ckpt).is_file():  # rows past add_count were never written
        rows = min(rows, int(fmt.read_rows(fmt.count_path(d, ckpt))[0]))
    return min(rows, ROWS_PER_BUFFER)


def plan_segments(
    terminals: dict[int, np.ndarray],
    num_steps: int,
    trajectories_per_buffer: int,
    rng: np.random.Generator,
) -> list[tuple[int, int, int]]:
    """``(ckpt, start, end)`` row ranges, one per trajectory, in sampling order.

    A visit takes the next ``trajectories_per_buffer`` trajectories (the original took one more);
    a visit that would run past the rows read is dropped whole and that buffer is done (the
    original kept the dropped pass's episode ends, and kept revisiting the buffer forever).
    """
    pos = dict.fromkeys(terminals, 0)
    ends = {b: np.flatnonzero(t) + 1 for b, t in terminals.items()}  # row after each game over
    live = sorted(terminals)
    segments, total = [], 0
    while total < num_steps:
        if not live:
            have = sum(e - s for _, s, e in segments)
            raise DatasetError(
                f"--num_steps {num_steps} is more than the data holds: the buffers give {have} "
                f"transitions in whole trajectories ({trajectories_per_buffer} per visit); lower "
                "--num_steps or --trajectories_per_buffer, or add buffers"
            )
        b = live[rng.integers(len(live))]
        e = ends[b]
        nxt = e[e > pos[b]][:trajectories_per_buffer]
        if len(nxt) < trajectories_per_buffer:
            live.remove(b)
            continue
        start = pos[b]
        for end in nxt:
            segments.append((b, int(start), int(end)))
            total += int(end - start)
            start = end
        pos[b] = int(start)
    return segments


def _fingerprint(d: Path, ckpts: list[int]) -> list:
    out = []
    for ckpt in ckpts:
        for s in fmt.STORES:
            st = fmt.store_path(d, s, ckpt).stat()
            out.append([ckpt, s, st.st_size, st.st_mtime_ns])
    return out


def create_dataset(
    num_buffers: int,
    num_steps: int,
    game: str,
    data_dir_prefix: str,
    trajectories_per_buffer: int,
    seed: int = 123,
    cache: bool = True,
    log=print,
) -> AtariDataset:
    """The sampled dataset, from the cache when the same sample of the same files was made."""
    if num_steps < 1 or trajectories_per_buffer < 1:
        raise ConfigError("--num_steps and --trajectories_per_buffer must be positive")
    d, ckpts = find_buffers(data_dir_prefix, game, num_buffers)
    rows = {b: _buffer_rows(d, b) for b in ckpts}
    key = json.dumps(
        [CACHE_VERSION, game, num_steps, trajectories_per_buffer, seed, _fingerprint(d, ckpts)]
    )
    cache_path = d.parent / "dt_cache" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            ds = AtariDataset(**{f.name: z[f.name] for f in fields(AtariDataset)})
        log(f"loaded {len(ds)} transitions in {len(ds.starts)} trajectories from {cache_path}")
        return ds

    t0 = time.time()
    terminals = {b: fmt.read_rows(fmt.store_path(d, "terminal", b), limit=rows[b]) for b in ckpts}
    segments = plan_segments(
        terminals, num_steps, trajectories_per_buffer, np.random.default_rng(seed)
    )
    n = sum(e - s for _, s, e in segments)
    lengths = np.array([e - s for _, s, e in segments], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    frames = np.empty((n, *fmt.FRAME_SHAPE), dtype=np.uint8)
    actions = np.empty(n, dtype=np.int64)
    rewards = np.empty(n, dtype=np.float32)
    for b in sorted({s[0] for s in segments}):
        # Destination of every planned row of this buffer; rows are disjoint across visits.
        src = np.concatenate([np.arange(s, e) for c, s, e in segments if c == b])
        dst = np.concatenate(
            [np.arange(o, o + e - s) for (c, s, e), o in zip(segments, starts) if c == b]
        )
        order = np.argsort(src)
        src, dst = src[order], dst[order]
        log(f"buffer {b}: reading {len(src)} of its rows")
        frames[dst] = fmt.read_rows(fmt.store_path(d, "observation", b), src)
        actions[dst] = fmt.read_rows(fmt.store_path(d, "action", b), src)
        rewards[dst] = fmt.read_rows(fmt.store_path(d, "reward", b), src)

    # Per trajectory: return-to-go is the sum of its own rewards from each step on, timesteps
    # count from 0 (the original carried both across trajectory boundaries by one step).
    rtgs = np.empty(n, dtype=np.float32)
    timesteps = np.empty(n, dtype=np.int64)
    for s, length in zip(starts, lengths):
        r = rewards[s : s + length].astype(np.float64)
        rtgs[s : s + length] = np.cumsum(r[::-1])[::-1]
        timesteps[s : s + length] = np.arange(length)
    ds = AtariDataset(frames, actions, rewards, rtgs, timesteps, starts)
    log(
        f"sampled {n} transitions in {len(starts)} trajectories from buffers "
        f"{sorted({s[0] for s in segments})} in {time.time() - t0:.1f}s; max return "
        f"{ds.returns().max():.0f}, max timestep {timesteps.max()}"
    )
    if cache:
        _save_cache(cache_path, ds, log)
    return ds


def _save_cache(path: Path, ds: AtariDataset, log) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k.name: getattr(ds, k.name) for k in fields(AtariDataset)})
        os.replace(tmp, path)
        log(f"cached the sample to {path}")
    except OSError as e:  # a read-only data folder still trains, just without the cache
        log(f"could not cache the sample ({e})")


# --- writing a small replay from ALE play -------------------------------------------------------


def breakout_action(ram: np.ndarray, noise: float, rng: np.random.Generator, n_actions: int) -> int:
    """Fire when no ball is in play, else move the paddle under the ball (RAM 99 = ball x,
    101 = ball y, 72 = paddle x); with probability ``noise`` a uniformly random action."""
    if rng.random() < noise:
        return int(rng.integers(n_actions))
    ball_x, ball_y, paddle_x = int(ram[99]), int(ram[101]), int(ram[72])
    if ball_y == 0:
        return 1  # FIRE
    if ball_x > paddle_x + 8:
        return 2  # RIGHT
    if ball_x < paddle_x + 4:
        return 3  # LEFT
    return 0


def collect(
    game: str,
    out: str,
    steps: int,
    buffers: int,
    seed: int,
    log=print,
) -> list[float]:
    """Play ``steps`` agent steps per buffer and write them as checkpoints 50-buffers..49 of run 1
    in the DQN-Replay format. Breakout: the ball-following paddle with per-episode noise drawn
    from [0, 1] (so returns spread from random play to a good player); other games: random play.
    Rewards are stored clipped to [-1, 1] as the DQN agent stored them. Returns the raw episode
    returns of the finished episodes."""
    from atari_env import make_env

    if not 1 <= buffers <= NUM_CKPTS:
        raise ConfigError(f"--buffers must be in 1..{NUM_CKPTS}")
    if steps < 1 or seed < 0:
        raise ConfigError(
            f"--steps_per_buffer must be positive and --seed >= 0, got {steps}, {seed}"
        )
    check_output_dir(out, "--out")
    env = make_env(game)
    n_actions = env.action_space.n
    d = replay_dir(out, game)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw_returns: list[float] = []
    episode = 0
    for ckpt in range(NUM_CKPTS - buffers, NUM_CKPTS):
        obs = np.empty((steps, *fmt.FRAME_SHAPE), dtype=np.uint8)
        act = np.empty(steps, dtype=np.int32)
        rew = np.empty(steps, dtype=np.float32)
        term = np.zeros(steps, dtype=np.uint8)
        frame, _ = env.reset(seed=seed * 1000 + episode)
        noise, ret = rng.random(), 0.0
        for i in range(steps):
            if game == "Breakout":
                a = breakout_action(env.unwrapped.ale.getRAM(), noise, rng, n_actions)
            else:
                a = int(rng.integers(n_actions))
            obs[i], act[i] = frame, a
            frame, r, terminated, truncated, _ = env.step(a)
            rew[i], ret = np.clip(r, -1.0, 1.0), ret + r
            if terminated or truncated:
                term[i] = 1
                raw_returns.append(ret)
                episode += 1
                frame, _ = env.reset(seed=seed * 1000 + episode)
                noise, ret = rng.random(), 0.0
        for store, arr in zip(fmt.STORES, (obs, act, rew, term)):
            fmt.write_array_gz(fmt.store_path(d, store, ckpt), arr)
        fmt.write_array_gz(fmt.count_path(d, ckpt), np.array(steps, dtype=np.int64))
        fmt.write_array_gz(fmt.invalid_range_path(d, ckpt), np.arange(steps - 3, steps + 1) % steps)
        log(f"wrote checkpoint {ckpt}: {steps} steps, {int(term.sum())} episode ends")
    env.close()
    return raw_returns


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--collect", action="store_true", help="write a small replay from ALE play")
    p.add_argument("--game", default="Breakout")
    p.add_argument("--out", default="./dqn_replay/", help="--collect: the data_dir_prefix to fill")
    p.add_argument("--steps_per_buffer", type=int, default=20_000, help="--collect")
    p.add_argument("--buffers", type=int, default=2, help="--collect: checkpoints 50-B..49")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--data_dir_prefix", default="./dqn_replay/")
    p.add_argument("--num_buffers", type=int, default=50)
    p.add_argument("--num_steps", type=int, default=500_000)
    p.add_argument("--trajectories_per_buffer", type=int, default=10)
    args = p.parse_args(argv)
    try:
        if args.collect:
            t0 = time.time()
            rets = collect(args.game, args.out, args.steps_per_buffer, args.buffers, args.seed)
            if rets:
                q = np.percentile(rets, [0, 25, 50, 75, 100])
                print(
                    f"{len(rets)} finished episodes in {time.time() - t0:.0f}s, raw returns "
                    f"min/25/50/75/max {' / '.join(f'{v:.0f}' for v in q)}"
                )
        else:
            create_dataset(
                args.num_buffers,
                args.num_steps,
                args.game,
                args.data_dir_prefix,
                args.trajectories_per_buffer,
                args.seed,
            )
    except UserError as e:
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
