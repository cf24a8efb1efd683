"""Checks of the paths a user passes for output, made before any long work: a folder that is a
file, lies under a file, or cannot be written in; a file whose folder is missing. Each failure is
a :class:`PathError` (a user error: one line, exit code 2)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from ..errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs there go unguarded
    fcntl = None

LOCK_NAME = ".lock"


class PathError(UserError, ValueError):
    """An output path that cannot be written; the message names the flag and the fix."""


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _check_base(path: Path, flag: str, base: Path) -> None:
    if not base.is_dir():
        raise PathError(f"{flag} {path} lies under {base}, which is a file: fix the path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {path}: cannot write in {base}: pick a writable place")


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` is (or can be made as) a folder this process can write in; missing folders
    are fine (they are created), a file on the way or a read-only place is not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{flag} {path} is a file, not a folder: pick a folder")
    _check_base(path, flag, _nearest_existing(path.absolute()))
    return path


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
