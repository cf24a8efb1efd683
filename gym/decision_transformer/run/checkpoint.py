"""Checkpoints written atomically and read back with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, one_line


class CheckpointError(UserError, ValueError):
    """The checkpoint is missing, unreadable or not one experiment.py wrote."""


class _Sink:
    """The file torch.save writes to, keeping the OSError of a failed write: torch reports a full
    disk as its own RuntimeError ("unexpected pos ..."), which says nothing of the cause."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill at any moment leaves
    either the old checkpoint or the new one, never a torn file. A failed write (a full disk:
    ENOSPC) raises its OSError, after removing the temp file; the old checkpoint stays."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(payload, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """``mmap=True`` maps the file instead of reading it: processes on one machine share pages."""
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def read_checkpoint(
    path: str | Path, required: tuple[str, ...], fix: str, mmap: bool = False
) -> dict:
    """``load_checkpoint`` for a file a user named: a missing, torn or foreign file (or one
    lacking a ``required`` key) is a CheckpointError whose message ends with ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {fix}")
    try:
        ckpt = load_checkpoint(path, mmap=mmap)
    except Exception as e:  # torch raises several unrelated types for a file it can't read
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({one_line(e, 120)}); {fix}"
        ) from None
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint written by experiment.py (no {', '.join(missing)}); {fix}"
        )
    return ckpt


# What each use of a checkpoint needs from it; anything lacking one is not this project's.
# ("model" and "optimizer" are absent from an FSDP run that skipped the consolidated copy: the
# "dcp" shards it names hold both.)
REQUIRED_KEYS = {
    "resume": ("optimizer", "scheduler", "rng", "iteration", "config"),
    "init": (
        "model",
        "optimizer",
        "scheduler",
        "rng",
        "iteration",
        "config",
        "state_mean",
        "state_std",
    ),  # fmt: skip
    "evaluate": ("config", "state_mean", "state_std"),
}
FIXES = {
    "resume": "drop --resume to start afresh (in an empty --out_dir)",
    "init": "pass the checkpoint.pt of a finished offline run",
    "evaluate": "point --checkpoint at the checkpoint.pt of a run experiment.py wrote",
}


def read_run_checkpoint(path: str | Path, use: str) -> dict:
    """The checkpoint at ``path`` for ``use`` (resume, init or evaluate), checked to hold what
    that use reads and a config dict. Memory-mapped: ranks on one machine share the page cache
    instead of a copy each."""
    fix = FIXES[use]
    ckpt = read_checkpoint(path, (), fix, mmap=use != "evaluate")
    sharded = isinstance(ckpt, dict) and "dcp" in ckpt
    missing = [
        k
        for k in REQUIRED_KEYS[use]
        if not isinstance(ckpt, dict) or (k not in ckpt and not (sharded and k == "optimizer"))
    ]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint written by experiment.py (no {', '.join(missing)}); {fix}"
        )
    if use != "evaluate" and not isinstance(ckpt["config"], dict):  # evaluate.py says more
        raise CheckpointError(
            f"--resume: {path} was not written by experiment.py (its config is not a dict); "
            "start afresh in another --out_dir"
            if use == "resume"
            else f"--init_from: {path} has no run config; {fix}"
        )
    return ckpt


def changed_flags(saved: dict, now: dict, free: set[str]) -> list[str]:
    """The flags a checkpoint's run recorded (``saved``) that differ now, those in ``free``
    aside: a resumed run with any of them changed would not be the same run. Only the keys the
    checkpoint recorded count, so a run older than a flag resumes with any value of it."""
    return sorted(k for k, v in saved.items() if k not in free and now.get(k) != v)


def rng_state(np_rng: np.random.Generator) -> dict:
    state = {
        "numpy": np_rng.bit_generator.state,
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, np_rng: np.random.Generator) -> None:
    np_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(restorable_cuda_states(state["cuda"])):
            torch.cuda.set_rng_state(cuda_state, device)


def restorable_cuda_states(saved: list[torch.Tensor], visible: int | None = None) -> list:
    """The saved per-GPU CUDA generator states this host can take: one per visible GPU, at most.

    A checkpoint holds one state per GPU its rank 0 saw (8 on an 8-GPU node); resuming on a host
    with fewer (the one-process resume) restores the first ``visible`` and drops the rest, which
    no device here would use. The run loses nothing by it: every iteration reseeds every device
    from ``(seed, rank, iteration)`` (experiment.seed_iteration) before it draws anything."""
    if visible is None:
        visible = torch.cuda.device_count()
    return list(saved)[:visible]


def seed_iteration(seed: int, rank: int, iteration: int, np_rng: np.random.Generator) -> None:
    """Seed torch (every device), Python and numpy from ``(seed, rank, iteration)``: a resumed
    run and one that never stopped draw the same numbers from each iteration on."""
    state = np.random.SeedSequence([seed, rank, iteration]).generate_state(2)
    torch.manual_seed(int(state[0]))
    random.seed(int(state[1]))
    np_rng.bit_generator.state = np.random.default_rng(state).bit_generator.state
