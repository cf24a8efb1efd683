"""What a number was made with: the versions of the stack and the machine, and a dataset's
fingerprint. At the bottom of the package (next to ``errors``) because runs, datasets, exports
and evaluation all record or compare them.

The simulator's results depend on mujoco's version and on the CPU (its floating-point paths):
the same seed gives another dataset on mujoco 3.17 than on 4.0, so every run folder's
``config.json`` and every dataset the project makes records what made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_open

# Distributions whose version changes numbers: the simulator, the environments, the emulator,
# the array and tensor libraries, the dataset reader.
STACK = ("torch", "mujoco", "gymnasium", "ale-py", "numpy", "minari")


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):  # x86 / some ARM kernels
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model() -> str | None:
    """The first CUDA device's name, or None on a machine without one (or without torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _version(dist: str) -> str | None:
    if dist == "torch" and "torch" in sys.modules:
        return sys.modules["torch"].__version__  # keeps the build tag: +cpu, +cu128
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def stack_versions() -> dict[str, str | None]:
    """The versions and machine behind a result: python, the STACK, the CPU, the GPU."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    out.update({dist: _version(dist) for dist in STACK})
    out["machine"] = platform.machine()
    out["cpu"] = cpu_model()
    out["gpu"] = gpu_model()
    return out


def version_drift(recorded: dict[str, Any], current: dict[str, Any] | None = None) -> list[str]:
    """``name recorded -> current`` for each entry that differs (entries a record lacks, as in
    run folders that predate the record, are not compared)."""
    current = stack_versions() if current is None else current
    return [
        f"{name} {recorded[name]} -> {current.get(name)}"
        for name in recorded
        if name in current and recorded[name] != current[name]
    ]


def content_hash(paths: list[dict[str, np.ndarray]]) -> str:
    """A hash of the trajectories themselves (keys, dtypes, shapes and bytes, in order), not of
    the file: the same data pickled by another protocol or numpy hashes the same."""
    h = hashlib.sha256()
    for path in paths:
        for key in sorted(path):
            arr = np.ascontiguousarray(path[key])
            h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(paths: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Episodes, steps, a return summary and the content hash: what tells two datasets apart."""
    returns = np.array([float(p["rewards"].sum()) for p in paths])
    lengths = np.array([len(p["rewards"]) for p in paths])
    return {
        "episodes": len(paths),
        "steps": int(lengths.sum()),
        "returns": {
            "min": round(float(returns.min()), 1),
            **{f"p{q}": round(float(np.percentile(returns, q)), 1) for q in (10, 50, 90)},
            "max": round(float(returns.max()), 1),
            "mean": round(float(returns.mean()), 1),
        },
        "content_hash": content_hash(paths),
    }


def describe_fingerprint(fp: dict[str, Any]) -> str:
    """One line for the console: what a made dataset is."""
    r = fp["returns"]
    return (
        f"episodes {fp['episodes']}, steps {fp['steps']}, return min {r['min']} / p10 {r['p10']}"
        f" / median {r['p50']} / p90 {r['p90']} / max {r['max']}, content {fp['content_hash']}"
    )


def describe_versions(versions: dict[str, Any]) -> str:
    """One line: ``torch 2.13.0+cpu, mujoco 4.0.1, ... on AMD EPYC``."""
    names = ("python",) + STACK
    stack = ", ".join(f"{n} {versions[n]}" for n in names if versions.get(n))
    where = versions.get("gpu") or versions.get("cpu")
    return f"{stack} on {where}" if where else stack


def write_run_config(path: str | os.PathLike, config: dict[str, Any]) -> list[str]:
    """Write a run folder's ``config.json``: ``config`` plus ``versions``, what this process runs
    on. A resumed run on another stack keeps the earlier record under ``earlier_versions`` and
    gets back the drift (``name old -> new``) to warn about."""
    path = Path(path)
    before = _read_json(path)
    versions = stack_versions()
    earlier = list(before.get("earlier_versions", []))
    drift = version_drift(before["versions"], versions) if "versions" in before else []
    if drift:
        earlier.append(before["versions"])
    record = {**config, "versions": versions}
    if earlier:
        record["earlier_versions"] = earlier
    with atomic_open(path, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    return drift


def run_versions(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The versions a run folder's ``config.json`` records (None before runs recorded them)."""
    return _read_json(Path(run_dir) / "config.json").get("versions")


def run_versions_or_now(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a run trained on (its config.json's ``versions``, ``recorded_by: run``) or, for runs
    from before those were recorded, what this process runs on, said as such: what an exported
    model folder records."""
    recorded = run_versions(run_dir)
    if recorded:
        return {"recorded_by": "run", **recorded}
    return {"recorded_by": "export (the run recorded none)", **stack_versions()}


def public_path(value: str | None) -> str | None:
    """A local path as it may be shared (a model folder on the Hub): its last part when it is
    absolute, starts with ~ or . or names something here, so no home directory or machine layout
    travels; anything else (a Hub repo id, ``owner/name``) as it is."""
    if not value or not isinstance(value, str):
        return value
    p = Path(value).expanduser()
    local = p.is_absolute() or value.startswith(("~", ".")) or p.exists()
    return (p.name or str(p)) if local else value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
