"""The Atari data path: DQN-Replay files in the real on-disk format, written from real ALE play,
read by the streaming reader; the sampling with the original's faults fixed; bad inputs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ATARI_DIR = Path(__file__).resolve().parents[1] / "atari"
sys.path.insert(0, str(ATARI_DIR))

import create_dataset as cd  # noqa: E402
import dqn_replay as fmt  # noqa: E402
from cli import run_main, script_env  # noqa: E402
from decision_transformer.errors import DatasetError  # noqa: E402


@pytest.fixture(scope="session")
def breakout_replay(tmp_path_factory) -> Path:
    """Two buffers of 1200 steps of the built-in Breakout player, via the CLI."""
    out = tmp_path_factory.mktemp("dqn_replay")
    proc = run_atari(
        "create_dataset.py", "--collect", "--game", "Breakout", "--out", out,
        "--steps_per_buffer", "1200", "--buffers", "2", "--seed", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def run_atari(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=ATARI_DIR,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_reader_matches_np_load_on_real_frames(breakout_replay):
    d = cd.replay_dir(str(breakout_replay), "Breakout")
    for store in fmt.STORES:
        path = fmt.store_path(d, store, 49)
        with gzip.open(path) as f:
            full = np.load(f, allow_pickle=False)
        assert np.array_equal(fmt.read_rows(path), full)
        rows = np.sort(np.random.default_rng(0).choice(len(full), 77, replace=False))
        got = fmt.read_rows(path, rows)
        assert got.dtype == full.dtype and np.array_equal(got, full[rows])
    obs = fmt.read_rows(fmt.store_path(d, "observation", 49))
    assert obs.shape == (1200, 84, 84) and obs.std() > 0  # real screens, not blanks
    assert int(fmt.read_rows(fmt.count_path(d, 49))[0]) == 50 * 1200 - 1  # dopamine's add_count


def test_sampled_dataset_is_consistent_with_the_files(breakout_replay, tmp_path):
    ds = cd.create_dataset(2, 1000, "Breakout", str(breakout_replay), 1, seed=5, cache=False,
                           log=lambda *_: None)  # fmt: skip
    assert len(ds) >= 1000
    d = cd.replay_dir(str(breakout_replay), "Breakout")
    # Every trajectory is a run of whole rows of one buffer ending at a game over.
    terms = {b: fmt.read_rows(fmt.store_path(d, "terminal", b)) for b in (48, 49)}
    rewards = {b: fmt.read_rows(fmt.store_path(d, "reward", b)) for b in (48, 49)}
    for s, e in zip(ds.starts, ds.ends):
        assert ds.timesteps[s] == 0 and ds.timesteps[e - 1] == e - 1 - s
        assert ds.rtgs[e - 1] == ds.rewards[e - 1]  # no reward of the next trajectory
        assert np.isclose(ds.rtgs[s], ds.rewards[s:e].sum())
        n = e - s
        match = [
            b
            for b in terms
            for i in range(len(terms[b]) - n + 1)
            if terms[b][i + n - 1] and np.array_equal(rewards[b][i : i + n], ds.rewards[s:e])
        ]
        assert match
    # Frame stacks: zeros before a trajectory's first frame, then its frames in order.
    s = int(ds.starts[-1])
    st = ds.stack(s + 1)
    assert not st[:2].any() and np.array_equal(st[2:], ds.frames[s : s + 2])
    # The training windows carry the same stacks, returns-to-go and the window's first timestep.
    from mingpt.trainer_atari import WindowDataset

    windows = WindowDataset(ds, 6)
    for w in (0, 1, len(windows) // 2, len(windows) - 1):
        i = int(windows.index[w])
        states, actions, rtgs, timesteps = windows[w]
        for k in range(6):
            assert np.array_equal(states[k].numpy(), ds.stack(i + k))
        assert np.array_equal(actions.numpy(), ds.actions[i : i + 6])
        assert np.array_equal(rtgs[:, 0].numpy(), ds.rtgs[i : i + 6])
        assert int(timesteps[0]) == ds.timesteps[i]
    # Cache: same arrays back, read with allow_pickle=False.
    a = cd.create_dataset(2, 1000, "Breakout", str(breakout_replay), 1, seed=5, log=lambda *_: 0)
    b = cd.create_dataset(2, 1000, "Breakout", str(breakout_replay), 1, seed=5, log=lambda *_: 0)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("frames", "rtgs", "starts"))


def test_sampling_takes_exactly_the_asked_trajectories():
    # Buffer 0: games end after rows 9, 19, 29, 39; buffer 1: 4, 9, ..., 49 and a tail.
    terminals = {0: np.zeros(45, np.uint8), 1: np.zeros(53, np.uint8)}
    terminals[0][[9, 19, 29, 39]] = 1
    terminals[1][4:50:5] = 1
    segs = cd.plan_segments(terminals, 40, 2, np.random.default_rng(0))
    by_visit = {}
    for b, s, e in segs:
        assert terminals[b][e - 1] == 1 and not terminals[b][s : e - 1].any()
        by_visit.setdefault(b, []).append((s, e))
    for runs in by_visit.values():  # contiguous, from row 0, whole visits of 2
        assert runs[0][0] == 0 and all(x[1] == y[0] for x, y in zip(runs, runs[1:]))
        assert len(runs) % 2 == 0
    with pytest.raises(DatasetError, match="more than the data holds"):
        cd.plan_segments(terminals, 10_000, 2, np.random.default_rng(0))


def original_sampling(terminals, num_steps, trajectories_per_buffer, rng, skipped=None, seen=None):
    """The original's sampling loop (kzl/decision-transformer atari/create_dataset.py at e2d82e6)
    transcribed row by row, its rows kept as ``(ckpt, start, end)`` per trajectory, with
    plan_segments' documented deviations D2-D5 (its docstring's numbers) marked where they
    change it; D1 (one trajectory fewer per visit) is left to the caller. ``seen`` counts the
    moments D2 and D3 changed the outcome."""
    seen = {} if seen is None else seen
    live = sorted(terminals)
    transitions_per_buffer = dict.fromkeys(live, 0)
    segments, loaded = [], 0  # loaded: the original's len(obss)
    while loaded < num_steps:
        if not live:  # D2: the original drew used-up buffers again, forever
            raise DatasetError("more than the data holds")
        # The original: np.random.choice(np.arange(50 - num_buffers, 50), 1)[0]. D4: from
        # rng, among the buffers found and not used up.
        buffer_num = int(rng.choice(np.array(live), 1)[0])
        i = transitions_per_buffer[buffer_num]
        capacity = len(terminals[buffer_num])
        if i >= capacity:  # D3 then D2: a buffer read to its last row has nothing more
            live.remove(buffer_num)
            continue
        curr_segments, curr_loaded = len(segments), loaded
        done = False
        trajectories_to_load = trajectories_per_buffer
        start = i
        while not done:
            loaded += 0 if skipped is not None and skipped[buffer_num][i] else 1  # D5
            if terminals[buffer_num][i]:
                segments.append((buffer_num, start, i + 1))
                start = i + 1
                if trajectories_to_load == 0:
                    done = True
                else:
                    trajectories_to_load -= 1
            i += 1
            if i >= capacity:
                if done:  # D3: the original dropped a visit ending on the last row too
                    seen["D3"] = seen.get("D3", 0) + 1
                    break
                del segments[curr_segments:]
                loaded = curr_loaded
                i = transitions_per_buffer[buffer_num]
                done = True
                live.remove(buffer_num)  # D2: used up, out of the draw
                seen["D2"] = seen.get("D2", 0) + 1
        transitions_per_buffer[buffer_num] = i
    return segments


def _plan_both(terminals, num_steps, asked, seed, skipped=None, seen=None):
    """plan_segments asked for ``asked`` trajectories per visit, and the original asked for one
    fewer (D1: it took one more than asked); each a DatasetError or the segments."""
    out = []
    for fn, n in ((cd.plan_segments, asked), (original_sampling, asked - 1)):
        kwargs = {"seen": seen} if fn is original_sampling else {}
        try:
            out.append(fn(terminals, num_steps, n, np.random.default_rng(seed), skipped, **kwargs))
        except DatasetError:
            out.append("more than the data holds")
    return out


def test_sampling_is_the_originals_on_the_same_random_stream():
    """Random episode ends in 1-5 buffers, buffers ending on a game over, buffers run dry, blank
    rows: plan_segments gives exactly the original's trajectories, in its order, from the same
    seed (the deviations aside). Taking twice the asked trajectories, or one more, differs."""
    seen: dict = {}
    compared = 0
    for case in range(60):
        g = np.random.default_rng(1000 + case)
        terminals, skipped = {}, {}
        for b in range(50 - int(g.integers(1, 6)), 50):
            rows, mean_len = int(g.integers(40, 300)), int(g.integers(3, 25))
            t = np.zeros(rows, np.uint8)
            ends = np.cumsum(1 + g.geometric(1 / mean_len, size=rows)) - int(g.integers(mean_len))
            t[ends[(ends >= 0) & (ends < rows)]] = 1
            if case % 3 == 0:
                t[-1] = 1  # a game over on the last row read
            terminals[b] = t
            skipped[b] = g.random(rows) < 0.1
        total = sum(len(t) for t in terminals.values())
        num_steps = int(total * g.uniform(0.05, 0.9))
        blanks = skipped if case % 2 else None
        for asked in (1, 2, 3):
            ours, original = _plan_both(terminals, num_steps, asked, case, blanks, seen)
            assert ours == original, (case, asked)
            compared += isinstance(ours, list)
    # Every deviation that changes an outcome was met, and most cases sampled.
    assert seen.get("D2", 0) > 10 and seen.get("D3", 0) > 3 and compared > 120, (seen, compared)


def test_sampling_of_real_files_is_the_originals(breakout_replay):
    """On the collected replay's own terminal flags (two buffers) the sampler and the
    transcribed original agree, and create_dataset's trajectories (the original's layout, blank
    rows kept) are the original's rows, in its order."""
    d = cd.replay_dir(str(breakout_replay), "Breakout")
    terminals = {b: fmt.read_rows(fmt.store_path(d, "terminal", b)) for b in (48, 49)}
    orders = set()
    for asked, num_steps, seed in ((1, 900, 0), (1, 2000, 0), (1, 2000, 1), (1, 2000, 2)):
        ours, original = _plan_both(terminals, num_steps, asked, seed)
        assert ours == original and isinstance(ours, list)
        orders.add(tuple(b for b, _, _ in original))
        ds = cd.create_dataset(2, num_steps, "Breakout", str(breakout_replay), asked, seed,
                               cache=False, log=lambda *_: 0, keep_blank_rows=True)  # fmt: skip
        assert list(ds.ends - ds.starts) == [e - s for _, s, e in original]
    assert len(orders) > 2  # the seeds drew the buffers in different orders
    # Two trajectories a visit: these buffers hold one game over each, both refuse alike.
    assert _plan_both(terminals, 900, 2, 0) == ["more than the data holds"] * 2


def test_streaming_memory_is_bounded_by_what_is_kept(tmp_path):
    """~340 MB of frames decompressed; keep 1500 rows (~10.6 MB); peak RSS growth stays near that
    (a whole np.load would add 340 MB)."""
    rows = 48_000
    path = tmp_path / "$store$_observation_ckpt.0.gz"
    frame = np.random.default_rng(0).integers(0, 255, (84, 84), dtype=np.uint8)
    block = np.broadcast_to(frame, (2000, 84, 84)).copy()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (rows, 84, 84)}
        )
        for _ in range(rows // len(block)):
            f.write(block.tobytes())
    code = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        sys.path.insert(0, {str(ATARI_DIR)!r})
        import dqn_replay
        def hwm():  # peak RSS in KiB of this process image; ru_maxrss keeps the parent's
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        base = hwm()
        want = np.sort(np.random.default_rng(1).choice({rows}, 1500, replace=False))
        out = dqn_replay.read_rows(__import__("pathlib").Path({str(path)!r}), want)
        assert out.shape == (1500, 84, 84) and (out[::100] == out[0]).all()
        peak = hwm()
        print((peak - base) * 1024, out.nbytes)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=script_env(), timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    grew, kept = map(int, proc.stdout.split()[-2:])
    decompressed = rows * 84 * 84
    assert kept <= grew < 3 * kept + 12 * 2**20, (grew, kept)
    assert grew < decompressed / 5  # a whole np.load grows by all of it


def test_prefix_without_trailing_slash(breakout_replay):
    a = cd.create_dataset(2, 500, "Breakout", str(breakout_replay), 1, 0, False, lambda *_: 0)
    b = cd.create_dataset(2, 500, "Breakout", str(breakout_replay) + "/", 1, 0, False, lambda *_: 0)
    assert len(a) == len(b) >= 500


def _copy_replay(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return cd.replay_dir(str(dst), "Breakout")


def test_bad_inputs_one_line_exit_2(breakout_replay, tmp_path):
    """The first as a user meets it, a real process; the rest through the entry functions."""
    import run_dt_atari

    base = ["--num_buffers", "2", "--trajectories_per_buffer", "1"]
    # Missing files: names the path and the --collect command.
    line = one_error_line(run_atari("create_dataset.py", "--data_dir_prefix", tmp_path / "none",
                                    "--num_steps", "100", *base))  # fmt: skip
    assert "$store$_observation_ckpt.49.gz" in line and "--collect" in line
    # More steps than the data holds.
    line = one_error_line(run_main(cd.main, "--data_dir_prefix", breakout_replay,
                                   "--num_steps", "10000000", *base))  # fmt: skip
    assert "--num_steps" in line
    # Truncated observation file.
    d = _copy_replay(breakout_replay, tmp_path / "trunc")
    for ckpt in (48, 49):
        p = fmt.store_path(d, "observation", ckpt)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 10])
    line = one_error_line(run_main(cd.main, "--data_dir_prefix", tmp_path / "trunc",
                                   "--num_steps", "1500", *base))  # fmt: skip
    assert "truncated" in line and "observation_ckpt.4" in line
    # Wrong dtype, and wrong shape.
    d = _copy_replay(breakout_replay, tmp_path / "dtype")
    fmt.write_array_gz(fmt.store_path(d, "observation", 48), np.zeros((1200, 84, 84), np.float32))
    line = one_error_line(run_main(cd.main, "--data_dir_prefix", tmp_path / "dtype",
                                   "--num_steps", "100", *base))  # fmt: skip
    assert "float32" in line
    d = _copy_replay(breakout_replay, tmp_path / "shape")
    fmt.write_array_gz(fmt.store_path(d, "observation", 48), np.zeros((1200, 80, 80), np.uint8))
    line = one_error_line(run_main(cd.main, "--data_dir_prefix", tmp_path / "shape",
                                   "--num_steps", "100", *base))  # fmt: skip
    assert "[1200, 80, 80]" in line
    # A game ale-py has no ROM for.
    line = one_error_line(run_main(run_dt_atari.main, "--game", "NoSuchGame",
                                   "--data_dir_prefix", breakout_replay))  # fmt: skip
    assert "NoSuchGame" in line
    # Backbone shapes that cannot work, refused before the data is read.
    line = one_error_line(run_main(run_dt_atari.main, "--backbone", "qwen3", "--n_kv_head", "3",
                                   "--data_dir_prefix", tmp_path / "none"))  # fmt: skip
    assert "--n_kv_head" in line


def test_collected_replay_records_what_made_it(breakout_replay, tmp_path):
    """collect.json in the run folder above the replay: settings, a fingerprint of the arrays
    and the versions; the same command again gives the same hash (the gzip files' own bytes
    differ: their headers hold the time), and a replay of another seed another hash."""
    from importlib.metadata import version

    d = cd.replay_dir(str(breakout_replay), "Breakout")
    assert not (d / "collect.json").exists()  # replay_logs holds dopamine's files alone
    record = json.loads((d.parent / "collect.json").read_text())
    assert record["settings"] == dict(game="Breakout", steps_per_buffer=1200, buffers=2, seed=3)
    assert record["fingerprint"]["rows"] == 2400 and record["fingerprint"]["episodes"] >= 1
    assert record["versions"]["ale-py"] == version("ale-py")
    again = []
    for seed in (3, 4):
        out = tmp_path / f"seed{seed}"
        proc = run_atari(
            "create_dataset.py", "--collect", "--game", "Breakout", "--out", out,
            "--steps_per_buffer", "1200", "--buffers", "2", "--seed", seed,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        made = json.loads((cd.replay_dir(str(out), "Breakout").parent / "collect.json").read_text())
        assert f"content {made['fingerprint']['content_hash']}, made with " in proc.stdout
        again.append(made["fingerprint"]["content_hash"])
    assert again[0] == record["fingerprint"]["content_hash"] != again[1]
