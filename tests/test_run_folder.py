"""A run folder is the run wherever it lives: moved, copied, or named by another spelling of the
same path, ``--resume`` continues it exactly as in its first place. And one process trains in it
at a time."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cli
import pytest
import torch
from cli import GYM_DIR, TINY, assert_one_line_error, run_main, script_env
from decision_transformer.run import experiment, paths
from rollouts import write_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=6, max_steps=40)
    return d


def train(data_dir, out, *args):
    """experiment.py's entry function in this process (no evaluation: the run's files are what
    is compared)."""
    argv = ["--env", "humanoid", "--data_dir", data_dir, "--out_dir", out, *TINY]
    return run_main(experiment.main, *argv, "--num_eval_episodes", "0", *args)


def state(out) -> tuple[dict, list[float]]:
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return ckpt["model"], [r["training/train_loss_mean"] for r in rows]


def test_a_moved_or_respelled_run_resumes_exactly(data_dir, tmp_path, monkeypatch):
    first = tmp_path / "first"
    assert train(data_dir, first, "--max_iters", "1").returncode == 0
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(first, moved)
    # The original folder by a relative path from its parent, and the copy by its absolute one.
    monkeypatch.chdir(tmp_path)
    assert train(data_dir, "first", "--max_iters", "2", "--resume").returncode == 0
    assert train(data_dir, moved, "--max_iters", "2", "--resume").returncode == 0
    (w_first, loss_first), (w_moved, loss_moved) = state(first), state(moved)
    assert len(loss_first) == 2 and loss_first == loss_moved
    for k, v in w_first.items():
        assert torch.equal(v, w_moved[k]), k


def test_another_flag_still_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    assert train(data_dir, out, "--max_iters", "1").returncode == 0
    refused = train(data_dir, out, "--max_iters", "2", "--resume", "--seed", "6")
    assert_one_line_error(refused, "flags differ from the checkpoint's run (seed)")


def test_a_folder_in_training_is_refused_to_a_second_process_until_the_first_dies(
    data_dir, tmp_path, capsys
):
    """A real training process holds its folder: a second run there (a double start, or a
    resume while the first still trains) is refused in one line naming the holder, before it
    loads anything. SIGKILL frees the folder: the kernel drops the lock with the process."""
    out = tmp_path / "run"
    argv = ["--env", "humanoid", "--data_dir", data_dir, "--out_dir", out, *TINY]
    holder = subprocess.Popen(  # ~forever: 10^6 steps in its first iteration
        [sys.executable, "experiment.py", *map(str, argv), "--num_eval_episodes", "0"]
        + ["--num_steps_per_iter", "1000000"],
        cwd=GYM_DIR, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (out / "config.json").exists():  # open_run_dir: folder made, lock taken
            assert holder.poll() is None, holder.stderr.read().decode()
            assert time.time() < deadline, "the first run never opened its folder"
            time.sleep(0.2)
        capsys.readouterr()
        second = train(data_dir, out, "--max_iters", "1")
        assert_one_line_error(second, f"is in use by pid {holder.pid} on ")
        assert capsys.readouterr().out == ""  # refused before it loaded the data
        assert "pick another --out_dir" in second.stderr
        assert not (out / "checkpoint.pt").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # The killed run left its folder with no checkpoint: a new run may start there at once.
    assert train(data_dir, out, "--max_iters", "1").returncode == 0
    assert (out / "checkpoint.pt").is_file()


def test_a_filesystem_without_locks_runs_unguarded_and_says_so(tmp_path, monkeypatch, capsys):
    """Lustre without -o flock answers flock() with ENOSYS: a cluster run must still train."""

    def no_flock(*_):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(paths.fcntl, "flock", no_flock)
    with paths.RunDirLock(tmp_path) as lock:
        assert lock._file is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: cannot lock {tmp_path} (Function not implemented)"), err


# --- what the filesystem does to the run folder ------------------------------------------------


def test_an_out_dir_that_cannot_be_created_is_refused_before_the_data_is_read(
    data_dir, tmp_path, monkeypatch
):
    """A name too long for the filesystem passes every check that does not try (the place is
    writable): the run makes the folder and removes it again before reading any data."""
    from decision_transformer.run import inputs

    def never(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(inputs, "load_dataset", never)
    out = tmp_path / "parent" / ("x" * 300)
    proc = train(data_dir, out)
    assert_one_line_error(proc, "cannot create it: File name too long (ENAMETOOLONG)")
    assert "--out_dir" in proc.stderr and not (tmp_path / "parent").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 1.2 MB filesystem (tmpfs; needs root): room for one tiny run's checkpoint
    (~0.8 MB) but not for the next one beside it. ``grow()`` frees space (a bigger disk)."""
    disk = tmp_path / "disk"
    with cli.small_disk(disk, "1200k") as grow:
        yield disk, grow


def test_a_full_disk_stops_in_one_line_keeps_the_checkpoint_and_resume_continues(
    data_dir, tmp_path, small_disk
):
    disk, grow = small_disk
    out = disk / "run"
    proc = train(data_dir, out, "--max_iters", "3")
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot write {out / 'checkpoint.pt'}: No space left on device (ENOSPC)" in lines[0]
    assert f"{out / 'checkpoint.pt'} (iteration 1) is kept" in lines[0] and "--resume" in lines[0]
    # The old checkpoint is whole and no temp file is left behind.
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoint.pt", "config.json", "metrics.jsonl",
    ]  # fmt: skip
    grow()
    assert train(data_dir, out, "--max_iters", "3", "--resume").returncode == 0
    whole = tmp_path / "whole"
    assert train(data_dir, whole, "--max_iters", "3").returncode == 0
    (w_cut, loss_cut), (w_whole, loss_whole) = state(out), state(whole)
    assert loss_cut == loss_whole and len(loss_cut) == 3
    assert all(torch.equal(v, w_whole[k]) for k, v in w_cut.items())


def test_a_write_failing_mid_run_without_root_stops_in_one_line(data_dir, tmp_path, monkeypatch):
    """The same without a small disk (no root needed): the file the 2nd checkpoint is written
    to takes 1000 bytes and then reports ENOSPC, as a full disk does, inside torch.save."""
    from decision_transformer.run import checkpoint

    real = checkpoint._Sink.write
    writes = {"checkpoints": 0}

    class Full:
        """The temp file, once the disk is full."""

        def __init__(self, f):
            self.flush = f.flush

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data):
        if writes["checkpoints"] == 2 and getattr(self, "written", 0) + len(data) > 1000:
            self.f = Full(self.f)
        self.written = getattr(self, "written", 0) + len(data)
        return real(self, data)

    real_init = checkpoint._Sink.__init__

    def init(self, f):
        writes["checkpoints"] += 1
        real_init(self, f)

    monkeypatch.setattr(checkpoint._Sink, "write", write)
    monkeypatch.setattr(checkpoint._Sink, "__init__", init)
    out = tmp_path / "run"
    proc = train(data_dir, out, "--max_iters", "3")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "No space left on device (ENOSPC)" in line and "(iteration 1) is kept" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1
    assert not list(out.glob("*.tmp"))
    monkeypatch.undo()
    assert train(data_dir, out, "--max_iters", "3", "--resume").returncode == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 3


# --- the same under torchrun: every rank stops, one line says why -----------------------------


def torchrun(data_dir, out, *args) -> subprocess.CompletedProcess:
    """experiment.py on 2 ranks (gloo), no evaluation."""
    from test_distributed import torchrun_args

    argv = ["--env", "humanoid", "--data_dir", data_dir, "--out_dir", out, *TINY]
    cmd = [sys.executable, *torchrun_args(2), *map(str, argv), "--num_eval_episodes", "0"]
    # The timeout is the bound: a rank left waiting in a collective would hang until it.
    return subprocess.run(
        [*cmd, *map(str, args)], cwd=GYM_DIR, env=script_env(), capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip


def assert_stopped_in_one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 1, the ranks' only complaint one line naming the cause (torchrun then reports the
    failed ranks in its own words, which are not the run's)."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert all(n in ours[0] for n in needles), ours[0]
    # No rank died of an exception (torch prefixes a rank's traceback with "[rankN]:").
    assert "[rank" not in proc.stderr and "CheckpointException" not in proc.stderr, proc.stderr


def test_a_full_disk_under_torchrun_stops_every_rank_in_one_line(data_dir, small_disk):
    """DDP on 2 ranks with the run folder on a full disk: rank 0's checkpoint.pt write fails,
    both ranks stop at that iteration, the old checkpoint stays and --resume continues."""
    disk, grow = small_disk
    out = disk / "run"
    proc = torchrun(data_dir, out, "--max_iters", "3")
    ckpt = out / "checkpoint.pt"
    assert_stopped_in_one_line(
        proc,
        f"cannot write {ckpt}: No space left on device (ENOSPC)",
        f"{ckpt} (iteration 1) is kept",
    )
    assert torch.load(ckpt, weights_only=True)["iteration"] == 1
    assert not list(out.glob("*.tmp"))
    grow()
    assert torchrun(data_dir, out, "--max_iters", "3", "--resume").returncode == 0
    assert torch.load(ckpt, weights_only=True)["iteration"] == 3


def test_a_shard_rank_1_cannot_write_stops_every_rank_in_one_line(data_dir, tmp_path):
    """FSDP on 2 ranks: every rank writes its own shard file. Rank 1's cannot be written (a
    directory stands where its file goes, as root too), which DCP reports on every rank: the
    line names that file, the old checkpoint and its shards stay, --resume continues."""
    out = tmp_path / "run"
    assert torchrun(data_dir, out, "--fsdp", "--max_iters", "1").returncode == 0
    blocker = out / "dcp-000002" / "__1_0.distcp"  # rank 1's shard of iteration 2
    blocker.mkdir(parents=True)
    proc = torchrun(data_dir, out, "--fsdp", "--max_iters", "2", "--resume")
    ckpt = out / "checkpoint.pt"
    assert_stopped_in_one_line(
        proc, f"cannot write {blocker}: Is a directory (EISDIR)", f"{ckpt} (iteration 1) is kept"
    )
    saved = torch.load(ckpt, weights_only=True)
    assert saved["iteration"] == 1 and (out / saved["dcp"] / "__1_0.distcp").is_file()
    blocker.rmdir()
    assert torchrun(data_dir, out, "--fsdp", "--max_iters", "2", "--resume").returncode == 0
    assert torch.load(ckpt, weights_only=True)["iteration"] == 2
