"""Running the project's scripts as a user would: a subprocess started in their folder."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GYM_DIR = ROOT / "gym"

TINY = [
    "--embed_dim",
    "32",
    "--n_layer",
    "1",
    "--n_head",
    "1",
    "--K",
    "5",
    "--batch_size",
    "8",
    "--num_steps_per_iter",
    "5",
    "--max_iters",
    "2",
    "--num_eval_episodes",
    "2",
    "--eval_envs",
    "2",
    "--warmup_steps",
    "5",
    "--device",
    "cpu",
]


def script_env() -> dict:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(
    script: str, *args: str, cwd: Path = GYM_DIR, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_script(script: str, *args: str, cwd: Path = GYM_DIR) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, script, *map(str, args)],
        cwd=cwd,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    """A user error as every entry point reports it: exit 2, one stderr line naming it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def run_main(main, *args) -> subprocess.CompletedProcess:
    """A script's entry function ``main(argv)`` called in this process, its exit code and stderr
    as run_script's: for the many refusals that need no real process (an interpreter start
    costs ~2 s; a few real ones per entry point stay). stdout stays pytest's: experiment.py's
    main line-buffers it, which a StringIO cannot."""
    argv = [str(a) for a in args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exit
            code = e.code
    return subprocess.CompletedProcess(argv, code, "", err.getvalue())


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A real filesystem of ``size`` (mount's units: 1200k) made at ``path`` (tmpfs; needs root;
    the test is skipped where it cannot be mounted). Yields ``grow()``: more room (8 MB), as
    after freeing disk space."""
    import pytest

    path.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=8m", str(path)], check=True)

    try:
        yield grow
    finally:
        subprocess.run(["umount", str(path)], check=True)


def carry_over(out: Path, to: Path, under: str) -> list[Path]:
    """Copy of a measurement's folder ``out`` into ``to`` holding only what git would commit had
    it been written at ``under`` (a path in this repository, e.g. benchmarks/results/m): what a
    later machine gets from a clone. Returns the files kept, relative to ``to``."""
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    names = "".join(f"{under}/{p.as_posix()}\n" for p in files)
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "--stdin"],
        input=names, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr  # 1: nothing ignored
    ignored = {Path(line).relative_to(under) for line in proc.stdout.splitlines()}
    kept = [p for p in files if p not in ignored]
    for p in kept:
        (to / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / p, to / p)
    return kept
