"""Checks of the paths a user passes for output, made before any long work: a folder that is a
file, lies under a file, or cannot be written in; a file whose folder is missing. Each failure is
a :class:`PathError` (a user error: one line, exit code 2)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from pathlib import Path

from ..errors import UserError
from ..provenance import write_run_config

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs there go unguarded
    fcntl = None

LOCK_NAME = ".lock"


class PathError(UserError, ValueError):
    """An output path that cannot be written; the message names the flag and the fix."""


class WriteError(Exception):
    """A write into the run folder failed mid-run (disk full, folder gone or read-only): not a
    user error of the command line, so the run reports it in one line and exits 1."""

    def __init__(self, path: str | Path, error: OSError):
        super().__init__(f"cannot write {path}: {cause(error)}")
        self.path, self.error = Path(path), error


def cause(error: OSError) -> str:
    """An OSError's cause in words, with its errno name (ENOSPC, EACCES, ...)."""
    name = errno.errorcode.get(error.errno or 0)
    text = error.strerror or str(error)
    return f"{text} ({name})" if name else text


@contextlib.contextmanager
def writing(path: str | Path):
    """Any OSError in the body becomes a :class:`WriteError` naming ``path``."""
    try:
        yield
    except OSError as e:
        raise WriteError(path, e) from None


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _check_base(path: Path, flag: str, base: Path) -> None:
    is_dir, writable = base.is_dir(), os.access(base, os.W_OK | os.X_OK)
    if not base.exists():
        # Removed since it was found: another rank's _probe made and removed it meanwhile (ranks
        # check the same --out_dir at once). Judge the folder that holds it now.
        _check_base(path, flag, _nearest_existing(base))
        return
    if not is_dir:
        raise PathError(f"{flag} {path} lies under {base}, which is a file: fix the path")
    if not writable:
        raise PathError(f"{flag} {path}: cannot write in {base}: pick a writable place")


def check_output_dir(path: str | Path, flag: str, probe: bool = False) -> Path:
    """``path`` is (or can be made as) a folder this process can write in; missing folders
    are fine (they are created), a file on the way or a read-only place is not. With ``probe``
    a missing folder is made and removed again: what only trying tells (a name too long, a
    full or read-only filesystem, a permission root's ``access`` does not see)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{flag} {path} is a file, not a folder: pick a folder")
    base = _nearest_existing(path.absolute())
    _check_base(path, flag, base)
    if probe and not path.exists():
        _probe(path, flag)
    return path


def _probe(path: Path, flag: str) -> None:
    made = [p for p in (path.absolute(), *path.absolute().parents) if not p.exists()]
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        message = f"{flag} {path}: cannot create it: {cause(e)}: pick another place"
        raise PathError(message) from None
    finally:
        for folder in made:  # deepest first; one another process filled meanwhile stays
            with contextlib.suppress(OSError):
                folder.rmdir()


CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the best iteration's weights (gym runs with --select_by)


def check_output_file(path: str | Path, flag: str, make_parent: bool = False) -> Path:
    """``path`` can be written as a file: not a folder, in a folder that exists (or, with
    ``make_parent``, can be made) and can be written in."""
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{flag} {path} is a folder: name a file in it")
    parent = path.absolute().parent
    if not parent.is_dir() and (parent.exists() or not make_parent):
        what = "is a file" if parent.exists() else "does not exist"
        raise PathError(f"{flag} {path}: its folder {parent} {what}: make it first or fix the path")
    _check_base(path, flag, _nearest_existing(parent))
    return path


def check_run_start(out_dir: str | Path, resume: bool) -> Path:
    """A fresh run needs a folder without a checkpoint, ``--resume`` one with; the checkpoint's
    path. (Both halves' run folders: gym's experiment.py and atari's run_dt_atari.py.)"""
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        raise PathError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start afresh")
    if not resume and ckpt_path.exists():
        raise PathError(
            f"{out_dir} already holds a run: pass --resume to continue it or pick another --out_dir"
        )
    return ckpt_path


def kept_after_failure(ckpt_path: Path, saved: int | None, unit: str = "iteration") -> str:
    """What a run stopped by a failed write leaves to continue from: its last good checkpoint,
    written after ``unit`` ``saved`` (None: none yet). Both halves' runs end their line so."""
    if saved is None:
        return "no checkpoint was written: fix that, then start the run again"
    return (
        f"the last good checkpoint {ckpt_path} ({unit} {saved}) is kept: "
        "fix that (e.g. free disk space), then continue with --resume"
    )


def open_run_folder(out_dir: str | Path, lock: RunDirLock, config: dict | None) -> None:
    """Rank 0, before the first iteration: the run folder made and locked, temp files of a write
    a kill interrupted removed (the checkpoint itself is intact), and with ``config`` its
    config.json written. Any OSError is one line naming the path and the cause."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # a fresh run's folder exists only now; a resumed one's is held
        for name in (CHECKPOINT_NAME, BEST_NAME):
            for stale in out_dir.glob(f"{name}*.tmp"):
                stale.unlink()
        if config is not None:
            drift = write_run_config(out_dir / "config.json", config)
            if drift:  # resumed on another stack: the earlier record is kept in config.json
                print(f"warning: resuming on other versions than the run's: {'; '.join(drift)}; "
                      "numbers may differ from a run on one stack", file=sys.stderr)  # fmt: skip
    except OSError as e:
        where = e.filename or out_dir
        raise PathError(
            f"--out_dir {out_dir}: cannot write {where}: {cause(e)}: fix that or pick another "
            "--out_dir"
        ) from None


class RunDirLock:
    """One training process per run folder at a time (two resuming the same folder would both
    write its checkpoints and metrics). :meth:`acquire` takes an exclusive ``flock`` on the
    folder's ``.lock`` file; the kernel drops it when the process ends, even by SIGKILL, so a
    killed run leaves no stale lock to clear by hand. Entering takes the lock if the folder
    exists (a resumed run: refused before any long work); a fresh run calls :meth:`acquire`
    once it has made the folder. Under torchrun only rank 0 holds it (``enabled``)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled and fcntl is not None
        self._file = None

    def acquire(self) -> None:
        if not self.enabled or self._file is not None:
            return
        try:
            f = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115 (held open until release)
        except OSError:  # an unwritable folder: check_output_dir names it as the user's error
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise PathError(
                f"--out_dir {self.path} is in use by {holder}: wait for it to end or pick "
                "another --out_dir"
            ) from None
        except OSError as e:
            # Filesystems without flock (Lustre mounted without -o flock: ENOSYS; NFS with no
            # lock daemon: ENOLCK) must not stop a run: it goes on unguarded, and says so.
            f.close()
            print(
                f"warning: cannot lock {self.path} ({e.strerror}): nothing stops a second "
                "process from training in it",
                file=sys.stderr,
            )
            return
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> RunDirLock:
        if self.path.is_dir():
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
