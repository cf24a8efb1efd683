"""The DQN-Replay on-disk format, read and written with numpy and gzip alone (no TensorFlow).

A replay buffer checkpoint ``N`` of one run is six files in ``{prefix}{Game}/{run}/replay_logs/``:
``$store$_observation_ckpt.N.gz`` ([rows, 84, 84] uint8 single frames),
``$store$_action_ckpt.N.gz`` ([rows] int32), ``$store$_reward_ckpt.N.gz`` ([rows] float32, clipped
to [-1, 1] by the agent that recorded them), ``$store$_terminal_ckpt.N.gz`` ([rows] uint8, 1 where
the game ended after that step), ``add_count_ckpt.N.gz`` (a 0-d int: how many rows were added) and
``invalid_range_ckpt.N.gz`` (the rows the circular buffer could not sample). Each is an
``np.save`` array inside a gzip stream. Row ``i`` holds the frame the agent saw, the action it
took, the reward it got and whether the game ended then.

:func:`read_rows` streams through a file and keeps only the rows asked for: an observation file is
about 7 GB once decompressed, and loading it whole is what got the original killed.
"""

from __future__ import annotations

import ast
import gzip
import struct
import zlib
from pathlib import Path

import _paths  # noqa: F401
import numpy as np
from decision_transformer.errors import DatasetError

STORES = ("observation", "action", "reward", "terminal")
FRAME_SHAPE = (84, 84)
# What each store may hold: dtype kinds (u = unsigned, i = signed, f = float, b = bool) and the
# shape of one row.
EXPECTED = {
    "observation": ("u", FRAME_SHAPE),
    "action": ("ui", ()),
    "reward": ("fiu", ()),
    "terminal": ("uib", ()),
}
_MAGIC = b"\x93NUMPY"
_CHUNK_BYTES = 8 << 20  # decompress this much at a time: the streaming reader's working memory


def store_path(replay_dir: Path, store: str, ckpt: int) -> Path:
    return Path(replay_dir) / f"$store$_{store}_ckpt.{ckpt}.gz"


def count_path(replay_dir: Path, ckpt: int) -> Path:
    return Path(replay_dir) / f"add_count_ckpt.{ckpt}.gz"


def invalid_range_path(replay_dir: Path, ckpt: int) -> Path:
    return Path(replay_dir) / f"invalid_range_ckpt.{ckpt}.gz"


def write_array_gz(path: Path, array: np.ndarray) -> None:
    """``np.save`` into a gzip stream, as dopamine's replay buffer saves each store."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def _read_header(f, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """Parse the ``.npy`` header at the start of ``f``: (dtype, shape). Pickled object arrays and
    Fortran order are refused; the header dict is read with ``ast.literal_eval`` (no code runs)."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != _MAGIC:
        raise DatasetError(f"{path} is not a gzip'd .npy array (bad magic); re-download it")
    major = magic[6]
    size_fmt = "<H" if major == 1 else "<I"
    size_raw = f.read(struct.calcsize(size_fmt))
    (header_len,) = struct.unpack(size_fmt, size_raw)
    header = ast.literal_eval(f.read(header_len).decode("latin1"))
    dtype = np.dtype(header["descr"])
    if dtype.hasobject or header["fortran_order"]:
        raise DatasetError(f"{path} holds an object or Fortran-order array; not a replay store")
    return dtype, tuple(header["shape"])


def _open(path: Path):
    if not path.is_file():
        raise FileNotFoundError(path)
    return gzip.open(path, "rb")


def read_header(path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape of a gzip'd ``.npy`` file, reading only its first bytes."""
    try:
        with _open(path) as f:
            return _read_header(f, path)
    except (OSError, EOFError, zlib.error, ValueError, SyntaxError, KeyError) as e:
        if isinstance(e, DatasetError | FileNotFoundError):
            raise
        raise DatasetError(
            f"{path} is not a readable gzip'd .npy array ({e}); re-download it"
        ) from None


def check_store(path: Path, store: str) -> int:
    """Check a store's dtype and row shape against the format; return its row count."""
    dtype, shape = read_header(path)
    kinds, row_shape = EXPECTED[store]
    if dtype.kind not in kinds or tuple(shape[1:]) != row_shape or len(shape) != 1 + len(row_shape):
        want = f"[rows{''.join(f', {d}' for d in row_shape)}]"
        raise DatasetError(
            f"{path} holds a {dtype} array of shape {list(shape)}; a DQN-Replay {store} store is "
            f"{want} of kind {kinds!r}"
        )
    return shape[0]


def read_rows(path: Path, rows: np.ndarray | None = None, limit: int | None = None) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a gzip'd ``.npy`` file, or its first ``limit`` rows.

    Decompresses in chunks of ~8 MB and stops after the last row needed, so memory is what is
    returned plus one chunk, whatever the file's size. A truncated or corrupt stream, or a file
    shorter than the rows asked for, raises DatasetError naming the file.
    """
    try:
        with _open(path) as f:
            dtype, shape = _read_header(f, path)
            n = shape[0] if shape else 1
            row_shape = shape[1:]
            per_row = int(np.prod(row_shape, dtype=np.int64))  # items in one row
            row_bytes = dtype.itemsize * per_row
            if rows is None:
                rows = np.arange(n if limit is None else min(n, limit))
            rows = np.asarray(rows, dtype=np.int64)
            out = np.empty((len(rows), *row_shape), dtype=dtype)
            if len(rows) == 0:
                return out
            if rows[-1] >= n:
                raise DatasetError(f"{path} has {n} rows; row {rows[-1]} was asked for")
            per_chunk = max(1, _CHUNK_BYTES // max(row_bytes, 1))
            buf = bytearray(per_chunk * row_bytes)
            view = memoryview(buf)
            done = 0  # rows of `rows` already filled
            start = 0  # file row at the start of the current chunk
            last = int(rows[-1])
            while start <= last:
                count = min(per_chunk, last + 1 - start)
                want = count * row_bytes
                got = 0
                while got < want:
                    k = f.readinto(view[got:want])
                    if not k:
                        raise EOFError("stream ended early")
                    got += k
                chunk = np.frombuffer(buf, dtype=dtype, count=count * per_row)
                chunk = chunk.reshape(count, *row_shape)
                stop = int(np.searchsorted(rows, start + count))
                out[done:stop] = chunk[rows[done:stop] - start]
                done, start = stop, start + count
            return out
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DatasetError(
            f"{path} is truncated or corrupt ({e}); re-download it or re-run --collect"
        ) from None
