"""Checks of the paths a user passes for output, made before any long work: a folder that is a
file, lies under a file, or cannot be written in; a file whose folder is missing. Each failure is
a :class:`PathError` (a user error: one line, exit code 2)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


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
