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
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import _paths  # noqa: F401
import dqn_replay as fmt
import numpy as np
from decision_transformer.errors import ConfigError, DatasetError, UserError
from decision_transformer.files import atomic_open
from decision_transformer.provenance import describe_versions, stack_versions
from decision_transformer.run.cli import OneLineParser, report
from decision_transformer.run.paths import check_output_dir

NUM_CKPTS = 50  # buffers per run in DQN-Replay: checkpoints 0..49
ROWS_PER_BUFFER = 100_000  # the original read each buffer with replay_capacity=100000
RUN = "1"  # the original always reads run 1 of the five
CACHE_VERSION = 2


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
    skipped: dict[int, np.ndarray] | None = None,
) -> list[tuple[int, int, int]]:
    """``(ckpt, start, end)`` row ranges, one per trajectory, in sampling order.

    The original's loop in row ranges: draw a buffer, take the next ``trajectories_per_buffer``
    trajectories from where the last visit to it stopped, until ``num_steps`` rows are in. Its
    deviations from the original, each pinned by tests/test_atari_data.py's transcription of it:

    1. A visit takes ``trajectories_per_buffer`` trajectories; the original took one more (its
       counter was tested after a trajectory was taken, down to zero).
    2. A visit that would run past the rows read is dropped whole and the buffer leaves the
       draw (the original kept the dropped pass's episode ends, and drew the buffer again,
       forever once every buffer was used up).
    3. A visit whose last trajectory ends on the last row read is kept (the original checked
       the bound after that row and dropped the visit).
    4. The buffer is drawn as the original's ``np.random.choice`` over the buffers, but from
       ``rng`` (not numpy's global state), among the buffers found and not used up (2).
    5. Rows flagged in ``skipped`` (dopamine's blank rows) do not count towards ``num_steps``.
    """
    pos = dict.fromkeys(terminals, 0)
    ends = {b: np.flatnonzero(t) + 1 for b, t in terminals.items()}  # row after each game over
    counted = {  # counted rows before each row: a segment's count is a difference
        b: np.concatenate([[0], np.cumsum(~skipped[b] if skipped else np.ones(len(t), bool))])
        for b, t in terminals.items()
    }
    live = sorted(terminals)
    segments, total = [], 0
    while total < num_steps:
        if not live:
            raise DatasetError(
                f"--num_steps {num_steps} is more than the data holds: the buffers give {total} "
                f"steps in whole trajectories ({trajectories_per_buffer} per visit); lower "
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
            total += int(counted[b][end] - counted[b][start])
            start = end
        pos[b] = int(start)
    return segments


def blank_candidates(actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """Rows that may be dopamine's blank rows (judged without frames): up to 3 rows of action 0,
    reward 0, not terminal at the start of the buffer and after every game over."""
    out = np.zeros(len(terminals), bool)
    for s in np.concatenate([[0], np.flatnonzero(terminals) + 1]):
        s = int(s)
        n = fmt.blank_prefix(actions[s : s + 3], rewards[s : s + 3], terminals[s : s + 3])
        out[s : s + n] = True
    return out


def _fingerprint(d: Path, ckpts: list[int]) -> list:
    out = []
    for ckpt in ckpts:
        for s in fmt.STORES:
            st = fmt.store_path(d, s, ckpt).stat()
            out.append([ckpt, s, st.st_size, st.st_mtime_ns])
    return out


def sample_bytes(n: int) -> int:
    """Bytes of a sample of ``n`` steps in the cache: frame, action, reward, rtg, timestep."""
    return n * (fmt.FRAME_SHAPE[0] * fmt.FRAME_SHAPE[1] + 8 + 4 + 4 + 8)


def create_dataset(
    num_buffers: int,
    num_steps: int,
    game: str,
    data_dir_prefix: str,
    trajectories_per_buffer: int,
    seed: int = 123,
    cache: bool = True,
    log=print,
    keep_blank_rows: bool = False,
    cache_dir: str | None = None,
) -> AtariDataset:
    """The sampled dataset, from the cache when the same sample of the same files was made.

    Dopamine's three blank rows before each episode are left out (a trajectory starts at its
    first real frame, timestep 0), unless ``keep_blank_rows`` (the original's layout: they are
    the trajectory's first three steps and ``num_steps`` counts them)."""
    if num_steps < 1 or trajectories_per_buffer < 1:
        raise ConfigError("--num_steps and --trajectories_per_buffer must be positive")
    d, ckpts = find_buffers(data_dir_prefix, game, num_buffers)
    rows = {b: _buffer_rows(d, b) for b in ckpts}
    key = json.dumps(
        [CACHE_VERSION, game, num_steps, trajectories_per_buffer, seed, keep_blank_rows,
         _fingerprint(d, ckpts)]
    )  # fmt: skip
    folder = Path(cache_dir) if cache_dir else d.parent / "dt_cache"
    cache_path = folder / f"{game}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            ds = AtariDataset(**{f.name: z[f.name] for f in fields(AtariDataset)})
        log(f"loaded {len(ds)} transitions in {len(ds.starts)} trajectories from {cache_path}")
        return ds

    t0 = time.time()
    terminals, skipped = {}, {}
    for b in ckpts:
        terminals[b] = fmt.read_rows(fmt.store_path(d, "terminal", b), limit=rows[b])
        if not keep_blank_rows:
            act = fmt.read_rows(fmt.store_path(d, "action", b), limit=rows[b])
            rew = fmt.read_rows(fmt.store_path(d, "reward", b), limit=rows[b])
            skipped[b] = blank_candidates(act, rew, terminals[b])
    segments = plan_segments(
        terminals,
        num_steps,
        trajectories_per_buffer,
        np.random.default_rng(seed),
        skipped or None,
    )
    n = sum(e - s for _, s, e in segments)
    lengths = np.array([e - s for _, s, e in segments], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    frames = np.empty((n, *fmt.FRAME_SHAPE), dtype=np.uint8)
    actions = np.empty(n, dtype=np.int64)
    rewards = np.empty(n, dtype=np.float32)
    terms = np.empty(n, dtype=np.uint8)
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
        terms[dst] = fmt.read_rows(fmt.store_path(d, "terminal", b), src)

    if not keep_blank_rows:
        # Now with the frames: a trajectory's blank rows are its leading all-zero rows.
        keep = np.ones(n, bool)
        for s, length in zip(starts, lengths):
            e = s + min(length, 3)
            keep[s : s + fmt.blank_prefix(actions[s:e], rewards[s:e], terms[s:e], frames[s:e])] = 0
        lengths = np.add.reduceat(keep.astype(np.int64), starts)
        frames, actions, rewards = frames[keep], actions[keep], rewards[keep]
        n = int(keep.sum())
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        log(f"left out {int((~keep).sum())} blank rows (dopamine's 3 before each episode)")

    # Per trajectory: return-to-go is the sum of its own rewards from each step on, timesteps
    # count from 0 (the original's timesteps carried across trajectory boundaries by one step).
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
    size = sample_bytes(len(ds))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free
        if free < size * 1.1:
            log(f"not caching the sample ({size / 1e9:.2f} GB; {free / 1e9:.2f} GB free in "
                f"{path.parent}); --cache_dir puts it elsewhere")  # fmt: skip
            return
        log(f"caching the sample ({size / 1e9:.2f} GB, uncompressed) to {path}")
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{k.name: getattr(ds, k.name) for k in fields(AtariDataset)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:  # a read-only data folder still trains, just without the cache
        log(f"could not cache the sample ({e}); --cache_dir puts it elsewhere")


# --- writing a small replay from ALE play -------------------------------------------------------


# Scripted players for --collect, read from the console RAM (checked against the emulator: see
# atari/README.md). ``memory`` is a per-episode dict a player may keep state in.


def breakout_action(
    ram: np.ndarray, noise: float, rng: np.random.Generator, n_actions: int, memory: dict
) -> int:
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


def pong_action(
    ram: np.ndarray, noise: float, rng: np.random.Generator, n_actions: int, memory: dict
) -> int:
    """Keep the right paddle level with the ball (RAM 51 = player paddle y, 54 = ball y, 0 when
    no ball is in play; larger is lower on screen); action 2 (RIGHT) moves the paddle up, 3
    (LEFT) down. With probability ``0.1 * noise**2`` a uniformly random action: Pong punishes
    a mistimed move hard (a random action on 10% of steps already loses 21-0 or close), so the
    noise is squared and scaled to grade returns from about -21 up to winning."""
    if rng.random() < 0.1 * noise**2:
        return int(rng.integers(n_actions))
    paddle_y, ball_y = int(ram[51]), int(ram[54])
    if ball_y == 0:
        return 0
    # Level when the paddle's RAM y is ~12 above the ball's (paddle top ~ RAM 51 - 9 rows, ball
    # centre ~ RAM 54 - 12 rows on screen, paddle 16 rows tall); a dead band of 1 stops jitter.
    if paddle_y + 12 < ball_y - 1:
        return 3
    if paddle_y + 12 > ball_y + 1:
        return 2
    return 0


SCRIPTED = {"Breakout": breakout_action, "Pong": pong_action}


def collect(
    game: str,
    out: str,
    steps: int,
    buffers: int,
    seed: int,
    log=print,
) -> list[float]:
    """Play ALE and log it as a DQN-Replay run does: dopamine's circular buffer of ``steps``
    rows (blank rows included), checkpoints ``50-buffers .. 49`` of run 1 written when the buffer
    wraps, then a short tail logged as the final partial checkpoint 50 (the real runs have one
    too; the reader, like the original, reads 0..49). Breakout and Pong: a scripted player with
    per-episode noise drawn from [0, 1] (so returns spread from random play to a good player);
    other games: random play. Rewards are stored clipped to [-1, 1] as the DQN agent stored
    them. Returns the raw returns of the finished episodes."""
    from atari_env import make_env

    if not 1 <= buffers <= NUM_CKPTS:
        raise ConfigError(f"--buffers must be in 1..{NUM_CKPTS}")
    if steps < 100:
        raise ConfigError(f"--steps_per_buffer must be positive and at least 100, got {steps}")
    if seed < 0:
        raise ConfigError(f"--seed >= 0 needed (ALE seeds from it), got {seed}")
    check_output_dir(out, "--out")
    env = make_env(game)
    n_actions = env.action_space.n
    policy = SCRIPTED.get(game)
    d = replay_dir(out, game)
    d.mkdir(parents=True, exist_ok=True)
    buf = fmt.LoggedReplayBuffer(d, steps, first_log=NUM_CKPTS - buffers)
    rng = np.random.default_rng(seed)
    raw_returns: list[float] = []
    episode, tail = 0, None  # tail: agent steps left after the last full checkpoint

    frame, _ = env.reset(seed=seed * 1000 + episode)
    noise, ret, memory = rng.random(), 0.0, {}
    while tail is None or tail > 0:
        if policy is not None:
            a = policy(env.unwrapped.ale.getRAM(), noise, rng, n_actions, memory)
        else:
            a = int(rng.integers(n_actions))
        next_frame, r, terminated, truncated, _ = env.step(a)
        ret += r
        done = terminated or truncated
        logged = buf.add(frame, a, float(np.clip(r, -1.0, 1.0)), done)
        if logged is not None:
            log(f"wrote checkpoint {logged}: {steps} rows, add_count {int(buf.add_count)}")
            if logged == NUM_CKPTS - 1:
                tail = max(1, steps // 20)
        elif tail is not None:
            tail -= 1
        frame = next_frame
        if done:
            raw_returns.append(ret)
            episode += 1
            frame, _ = env.reset(seed=seed * 1000 + episode)
            noise, ret, memory = rng.random(), 0.0, {}
    final = buf.log_final()
    log(f"wrote the final partial checkpoint {final} (add_count {buf.cursor()})")
    env.close()
    describe_collected(d, dict(game=game, steps_per_buffer=steps, buffers=buffers, seed=seed),
                       raw_returns, log)  # fmt: skip
    return raw_returns


def describe_collected(d: Path, settings: dict, raw_returns: list[float], log=print) -> None:
    """``collect.json`` in the run folder above ``replay_logs`` (which keeps dopamine's files
    alone): the settings, a fingerprint and the versions and CPU that made it, as the gym
    datasets record. The hash is of the arrays, not of the gzip files (whose headers hold the
    time written)."""
    h = hashlib.sha256()
    for path in sorted(d.glob("*.gz")):
        with gzip.open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    returns = np.asarray(raw_returns if raw_returns else [np.nan])
    record = {
        "made_by": "atari/create_dataset.py --collect",
        "settings": settings,
        "fingerprint": {
            "episodes": len(raw_returns),
            "rows": settings["steps_per_buffer"] * settings["buffers"],
            "raw_returns": {k: round(float(f(returns)), 1) for k, f in
                            (("min", np.min), ("median", np.median), ("max", np.max))},
            "content_hash": h.hexdigest()[:16],
        },
        "versions": stack_versions(),
    }  # fmt: skip
    with atomic_open(d.parent / "collect.json", "w") as f:
        json.dump(record, f, indent=2)
    where = d.parent / "collect.json"
    log(f"content {record['fingerprint']['content_hash']}, "
        f"made with {describe_versions(record['versions'])} ({where})")  # fmt: skip


def download_urls(game: str, num_buffers: int, run: str = RUN) -> list[str]:
    """The DQN-Replay files the sampler reads: the four stores and add_count of the last
    ``num_buffers`` of checkpoints 0..49 of one run (not invalid_range, nor the final partial
    checkpoint 50, nor the other four runs)."""
    base = f"gs://atari-replay-datasets/dqn/{game}/{run}/replay_logs"
    names = [f"$store$_{s}" for s in fmt.STORES] + ["add_count"]
    return [
        f"{base}/{name}_ckpt.{n}.gz"
        for n in range(NUM_CKPTS - num_buffers, NUM_CKPTS)
        for name in names
    ]


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """The sampling flags shared with run_dt_atari.py."""
    p.add_argument(
        "--keep_blank_rows",
        action="store_true",
        help="the original's layout: dopamine's 3 blank rows before each episode are the "
        "trajectory's first steps (first real frame at timestep 3) and count in --num_steps",
    )
    p.add_argument(
        "--cache_dir",
        default=None,
        help="where the sampled dataset is cached (~7 KB a step: 500k steps ~3.5 GB); "
        "default {data_dir_prefix}/{game}/1/dt_cache",
    )


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--collect", action="store_true", help="write a small replay from ALE play")
    p.add_argument(
        "--download_list",
        action="store_true",
        help="print the gs:// URLs the sampler reads (for: ... | gsutil -m cp -I DIR)",
    )
    p.add_argument("--game", default="Breakout")
    p.add_argument("--out", default="./dqn_replay/", help="--collect: the data_dir_prefix to fill")
    p.add_argument(
        "--steps_per_buffer", type=int, default=20_000, help="--collect: rows per checkpoint"
    )
    p.add_argument("--buffers", type=int, default=2, help="--collect: checkpoints 50-B..49")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--data_dir_prefix", default="./dqn_replay/")
    p.add_argument("--num_buffers", type=int, default=50)
    p.add_argument("--num_steps", type=int, default=500_000)
    p.add_argument("--trajectories_per_buffer", type=int, default=10)
    add_data_flags(p)
    args = p.parse_args(argv)
    try:
        if args.download_list:
            if not 1 <= args.num_buffers <= NUM_CKPTS:
                raise ConfigError(f"--num_buffers must be in 1..{NUM_CKPTS}")
            print("\n".join(download_urls(args.game, args.num_buffers)))
        elif args.collect:
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
                keep_blank_rows=args.keep_blank_rows,
                cache_dir=args.cache_dir,
            )
    except UserError as e:
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
