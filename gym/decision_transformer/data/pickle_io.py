"""Reading and writing trajectory files in the original ``{env}-{dataset}-v2.pkl`` format.

The original code unpickled these files with plain ``pickle.load``, which runs whatever code a
crafted file names. Here every file goes through :class:`RestrictedUnpickler`, which admits only
what a list of dicts of numpy arrays needs, so a hostile pickle is refused before it runs anything.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
from typing import Any

import numpy as np

from ..files import atomic_open

# (module, name) pairs a trajectory pickle may reference. numpy moved its internals from
# ``numpy.core`` to ``numpy._core`` in 2.0; files written by either generation must load.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = np._core.multiarray._reconstruct
    _ALLOWED_GLOBALS[(_mod, "scalar")] = np._core.multiarray.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_mod, "_frombuffer")] = np._core.numeric._frombuffer
_ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
_ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
# numpy >= 1.25 pickles dtypes through their classes in ``numpy.dtypes``.
for _name in dir(np.dtypes):
    if _name.endswith("DType"):
        _ALLOWED_GLOBALS[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)
_ALLOWED_GLOBALS[("collections", "OrderedDict")] = collections.OrderedDict
# Pickle protocols 0-2 carry raw bytes as latin-1 text decoded by this pure function.
_ALLOWED_GLOBALS[("_codecs", "encode")] = codecs.encode


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle references anything beyond numpy arrays and plain containers."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy globals listed in ``_ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load '{module}.{name}': trajectory files may hold only numpy "
                "arrays, numpy scalars and plain containers"
            ) from None


def load_paths_file(path: str | os.PathLike) -> list[dict[str, np.ndarray]]:
    """Load a list of trajectory dicts from ``path`` through the restricted unpickler."""
    with open(path, "rb") as f:
        data = RestrictedUnpickler(f).load()
    if isinstance(data, dict):  # a single trajectory saved on its own
        data = [data]
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise ValueError(f"{path}: expected a list of trajectory dicts, got {type(data).__name__}")
    return data


def save_paths(paths: list[dict[str, np.ndarray]], path: str | os.PathLike) -> None:
    """Write trajectories atomically (temp file + rename), so a crash never leaves half a file."""
    with atomic_open(path) as f:
        # Protocol 5 lets numpy hand over each array's buffer as is: loading then holds one
        # copy of the data, where protocol 4 keeps a second in the unpickler's memo.
        pickle.dump(paths, f, protocol=5)
