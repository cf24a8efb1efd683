"""The DQN-Replay layout as dopamine writes it (blank rows, add_count, invalid_range, checkpoint
numbering), written by ``create_dataset.py --collect`` and read back: trajectories start at their
first real frame at timestep 0 (or, with --keep_blank_rows, the original's layout)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ATARI_DIR = Path(__file__).resolve().parents[1] / "atari"
sys.path.insert(0, str(ATARI_DIR))

import create_dataset as cd  # noqa: E402
from cli import script_env  # noqa: E402

ROWS = 1200  # rows per checkpoint: the collected buffer's capacity


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    """Checkpoints 48, 49 (full) and 50 (final, partial) of Breakout play, via the CLI."""
    out = tmp_path_factory.mktemp("dopamine_layout")
    proc = subprocess.run(
        [sys.executable, "create_dataset.py", "--collect", "--game", "Breakout", "--out", str(out),
         "--steps_per_buffer", str(ROWS), "--buffers", "2", "--seed", "1"],
        cwd=ATARI_DIR, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def load(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        return np.load(f, allow_pickle=False)


def raw(replay: Path, ckpt: int) -> dict[str, np.ndarray]:
    d = cd.replay_dir(str(replay), "Breakout")
    out = {s: load(d / f"$store$_{s}_ckpt.{ckpt}.gz") for s in cd.fmt.STORES}
    out["add_count"] = load(d / f"add_count_ckpt.{ckpt}.gz")
    out["invalid_range"] = load(d / f"invalid_range_ckpt.{ckpt}.gz")
    return out


def test_collect_writes_dopamines_layout(replay):
    d = cd.replay_dir(str(replay), "Breakout")
    names = sorted(p.name for p in d.iterdir())
    # The six files per checkpoint that DQN-Replay has, for checkpoints 48, 49 and the final 50.
    kinds = ["$store$_action", "$store$_observation", "$store$_reward", "$store$_terminal",
             "add_count", "invalid_range"]  # fmt: skip
    assert names == sorted(f"{k}_ckpt.{n}.gz" for k in kinds for n in (48, 49, 50))
    b48, b49, b50 = raw(replay, 48), raw(replay, 49), raw(replay, 50)
    for b in (b48, b49, b50):
        assert b["observation"].dtype == np.uint8 and b["observation"].shape == (ROWS, 84, 84)
        assert b["action"].dtype == np.int32 and b["reward"].dtype == np.float32
        assert b["terminal"].dtype == np.uint8 and b["add_count"].dtype == np.int64
        assert b["add_count"].shape == ()
    # Logged when add_count % capacity == capacity - 1, numbered as in a 50-checkpoint run; the
    # cursor is then at the last row: invalid rows are the one before it and 4 from it on.
    assert int(b48["add_count"]) == 49 * ROWS - 1 and int(b49["add_count"]) == 50 * ROWS - 1
    for b in (b48, b49):
        assert b["invalid_range"].tolist() == [ROWS - 2, ROWS - 1, 0, 1, 2]
    # The final buffer is logged with add_count = its cursor.
    cursor = int(b50["add_count"])
    assert 0 < cursor < ROWS
    assert b50["invalid_range"].tolist() == [(cursor - 1 + i) % ROWS for i in range(5)]
    # The first checkpoint's last row was never written; circularly, buffer 49 starts with
    # the row written after 48 was logged (its row ROWS-1), then its rows 0..ROWS-2.
    assert not b48["observation"][-1].any() and b48["terminal"][-1] == 0
    stream = {
        k: np.concatenate([b48[k][:-1], b49[k][-1:], b49[k][:-1]])
        for k in ("observation", "action", "reward", "terminal")
    }
    # Every episode starts with exactly three blank rows, then a real frame.
    ends = np.flatnonzero(stream["terminal"])
    assert len(ends) >= 4
    starts = [0] + [int(e) + 1 for e in ends if e + 4 < len(stream["terminal"])]
    for s in starts:
        blank = slice(s, s + 3)
        assert not stream["observation"][blank].any()
        assert not stream["action"][blank].any() and not stream["reward"][blank].any()
        assert not stream["terminal"][blank].any()
        assert stream["observation"][s + 3].any()
    # ...and nowhere else is a row all zero.
    zero = ~stream["observation"].reshape(len(stream["action"]), -1).any(1)
    expected = np.zeros_like(zero)
    for s in starts:
        expected[s : s + 3] = True
    assert np.array_equal(zero[: starts[-1] + 3], expected[: starts[-1] + 3])


def _episodes_in_file(b: dict, rows: int) -> list[tuple[int, int]]:
    """(first real row, end) of each episode in a buffer's first ``rows`` rows, straight from
    the terminal flags and dopamine's rule of 3 blank rows after each game over."""
    ends = np.flatnonzero(b["terminal"][:rows]) + 1
    first = 0
    while first < 3 and not b["observation"][first].any():
        first += 1
    out, start = [], first
    for e in ends:
        out.append((start, int(e)))
        start = int(e) + 3
    return out


@pytest.mark.parametrize("keep_blank_rows", [False, True])
def test_trajectories_start_at_the_first_real_frame(replay, keep_blank_rows):
    ds = cd.create_dataset(2, 2000, "Breakout", str(replay), 1, seed=3, cache=False,
                           log=lambda *_: None, keep_blank_rows=keep_blank_rows)  # fmt: skip
    buffers = {b: raw(replay, b) for b in (48, 49)}
    episodes = {b: _episodes_in_file(buffers[b], ROWS) for b in buffers}
    assert len(ds.starts) >= 3
    for s, e in zip(ds.starts, ds.ends):
        # Return-to-go at every step is the direct sum of the trajectory's rewards from there.
        for i in range(s, e):
            assert ds.rtgs[i] == pytest.approx(float(ds.rewards[i:e].sum()), abs=1e-4)
        assert np.array_equal(ds.timesteps[s:e], np.arange(e - s))
        # The trajectory is one episode of the files, blank rows left out (or kept first).
        n_blank = 0
        if keep_blank_rows:
            while n_blank < 3 and not ds.frames[s + n_blank].any():
                n_blank += 1
        found = [
            (b, lo)
            for b, eps in episodes.items()
            for lo, hi in eps
            if hi - lo == e - s - n_blank
            and np.array_equal(buffers[b]["observation"][lo:hi], ds.frames[s + n_blank : e])
            and np.array_equal(buffers[b]["action"][lo:hi], ds.actions[s + n_blank : e])
        ]
        assert len(found) == 1, (s, e)
        b, lo = found[0]
        assert ds.frames[s + n_blank].any()
        if keep_blank_rows and lo >= 3:  # an episode whose blank rows are in the buffer
            assert n_blank == 3 and ds.timesteps[s + 3] == 3  # the original's layout
            assert not ds.actions[s : s + 3].any() and not ds.rewards[s : s + 3].any()
            assert ds.rtgs[s] == ds.rtgs[s + 3]
        elif not keep_blank_rows:
            assert ds.timesteps[s] == 0 and ds.stack(s)[:3].max() == 0
    if keep_blank_rows:
        assert any(not ds.frames[s].any() for s in ds.starts)
    else:
        assert all(ds.frames[s].any() for s in ds.starts)


def test_download_list_is_what_the_sampler_reads(replay, tmp_path):
    """The gs:// list names, per checkpoint the sampler may read, the files it opens: with only
    those files (no invalid_range, no checkpoint 50) the sample is the same."""
    import shutil

    urls = cd.download_urls("Breakout", 2)
    base = "gs://atari-replay-datasets/dqn/Breakout/1/replay_logs/"
    assert all(u.startswith(base) for u in urls) and len(urls) == len(set(urls)) == 2 * 5
    src = cd.replay_dir(str(replay), "Breakout")
    dst = cd.replay_dir(str(tmp_path), "Breakout")
    dst.mkdir(parents=True)
    for u in urls:
        shutil.copy(src / u[len(base) :], dst)
    assert len(cd.download_urls("Breakout", 50)) == 50 * 5
    a = cd.create_dataset(2, 1500, "Breakout", str(replay), 1, 4, False, lambda *_: 0)
    b = cd.create_dataset(2, 1500, "Breakout", str(tmp_path), 1, 4, False, lambda *_: 0)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("frames", "rtgs", "starts"))


def test_preset_and_targets(capsys):
    import run_dt_atari as r

    pong = r.resolve(r.parse_args(["--preset", "original", "--game", "Pong"]))
    assert (pong["context_length"], pong["batch_size"], pong["num_steps"]) == (50, 512, 500_000)
    given = r.resolve(
        r.parse_args(["--preset", "original", "--game", "Pong", "--batch_size", "64"])
    )
    assert (given["context_length"], given["batch_size"]) == (50, 64)  # a given flag wins
    plain = r.resolve(r.parse_args(["--game", "Pong"]))
    assert (plain["context_length"], plain["batch_size"]) == (30, 128)
    assert plain["dtype"] == "fp32" and plain["num_workers"] <= 8  # CPU here
    # A DT for a game without a paper target: one line naming --target_return, before any data.
    assert r.main(["--game", "MsPacman", "--data_dir_prefix", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--target_return" in err and "MsPacman" in err


def test_cache_goes_to_cache_dir_with_its_size_said_first(replay, tmp_path):
    lines: list[str] = []
    a = cd.create_dataset(2, 1500, "Breakout", str(replay), 1, 4, log=lines.append,
                          cache_dir=str(tmp_path / "cache"))  # fmt: skip
    (cached,) = (tmp_path / "cache").iterdir()
    said = [ln for ln in lines if ln.startswith("caching the sample")]
    assert said and f"{cd.sample_bytes(len(a)) / 1e9:.2f} GB" in said[0] and str(cached) in said[0]
    assert cached.stat().st_size >= len(a) * 84 * 84  # the frames, uncompressed
    assert not (cd.replay_dir(str(replay), "Breakout").parent / "dt_cache").exists()
    lines.clear()
    b = cd.create_dataset(2, 1500, "Breakout", str(replay), 1, 4, log=lines.append,
                          cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert lines[0].startswith("loaded") and np.array_equal(a.frames, b.frames)
