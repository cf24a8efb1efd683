"""The DQN-Replay on-disk format, read and written with numpy and gzip alone (no TensorFlow).

A replay buffer checkpoint ``N`` of one run is six files in ``{prefix}{Game}/{run}/replay_logs/``:
``$store$_observation_ckpt.N.gz`` ([rows, 84, 84] uint8 single frames),
``$store$_action_ckpt.N.gz`` ([rows] int32), ``$store$_reward_ckpt.N.gz`` ([rows] float32, clipped
to [-1, 1] by the agent that recorded them), ``$store$_terminal_ckpt.N.gz`` ([rows] uint8, 1 where
the game ended after that step), ``add_count_ckpt.N.gz`` (a 0-d int: how many rows were added) and
``invalid_range_ckpt.N.gz`` (the rows the circular buffer could not sample). Each is an
``np.save`` array inside a gzip stream. Row ``i`` holds the frame the agent saw, the action it
took, the reward it got and whether the game ended then.

Dopamine's buffer (``OutOfGraphReplayBuffer.add``) writes ``stack_size - 1 = 3`` blank rows (zero
frame, action 0, reward 0, not terminal) before the first frame of every episode, so that the
frame stack of an episode's first step is three zero frames and that frame; ``add_count`` counts
them. batch_rl's logged buffer saves the whole circular buffer as checkpoint ``k`` (counted from
0) whenever ``add_count % capacity == capacity - 1``, and once more at the end of training
(``log_final_buffer``, with ``add_count`` set to the cursor): :class:`LoggedReplayBuffer` writes
exactly that.

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


class LoggedReplayBuffer:
    """Dopamine's ``OutOfGraphReplayBuffer`` (stack 4, update horizon 1, the DQN agent's dtypes)
    as batch_rl's ``OutOfGraphLoggedReplayBuffer`` logs it to disk: three blank rows before each
    episode, ``add_count`` counting every row, ``invalid_range`` the 5 rows around the cursor,
    checkpoint ``k`` written when ``add_count % capacity == capacity - 1`` (checked once per
    ``add``, after its blank rows), the final partial buffer by :meth:`log_final`.

    ``first_log`` numbers the first checkpoint as a run that already wrote ``first_log`` of them
    would (``add_count`` starts at ``first_log * capacity``), so a short collection fills the
    last checkpoints of a 50-checkpoint run. Rows never written are zero (dopamine's
    ``np.empty``, which the first checkpoint's last row shows on disk).
    """

    STACK, HORIZON = 4, 1

    def __init__(self, replay_dir: Path, capacity: int, first_log: int = 0):
        if capacity <= self.STACK + self.HORIZON:
            raise ValueError(f"a replay capacity of {capacity} rows is too small")
        self.dir, self.capacity = Path(replay_dir), capacity
        self.store = {
            "observation": np.zeros((capacity, *FRAME_SHAPE), np.uint8),
            "action": np.zeros(capacity, np.int32),
            "reward": np.zeros(capacity, np.float32),
            "terminal": np.zeros(capacity, np.uint8),
        }
        self.add_count = np.array(first_log * capacity)  # int64, 0-d, as dopamine's
        self.invalid_range = np.zeros(self.STACK)  # float64 until the first add, as dopamine's
        self.log_count = first_log
        self.episode_start = True

    def cursor(self) -> int:
        return int(self.add_count) % self.capacity

    def _add(self, frame, action, reward, terminal) -> None:
        c = self.cursor()
        for name, value in zip(STORES, (frame, action, reward, terminal)):
            self.store[name][c] = value
        self.add_count += 1
        c = self.cursor()
        # dopamine's invalid_range(): the update_horizon rows before the cursor and the
        # stack_size rows from it on.
        self.invalid_range = np.array(
            [(c - self.HORIZON + i) % self.capacity for i in range(self.STACK + self.HORIZON)]
        )

    def add(self, frame: np.ndarray, action: int, reward: float, terminal: bool) -> int | None:
        """Add one agent step; returns the checkpoint number if this add logged one."""
        if self.episode_start:
            for _ in range(self.STACK - 1):
                self._add(0, 0, 0.0, 0)
            self.episode_start = False
        if terminal:
            self.episode_start = True
        self._add(frame, action, reward, terminal)
        if int(self.add_count) % self.capacity == self.capacity - 1:
            return self.log()
        return None

    def log(self) -> int:
        n = self.log_count
        for name, arr in self.store.items():
            write_array_gz(store_path(self.dir, name, n), arr)
        write_array_gz(count_path(self.dir, n), self.add_count)
        write_array_gz(invalid_range_path(self.dir, n), self.invalid_range)
        self.log_count += 1
        return n

    def log_final(self) -> int:
        """batch_rl's ``log_final_buffer``: the buffer as it stands, ``add_count`` = cursor."""
        saved = self.add_count
        self.add_count = np.array(self.cursor())
        try:
            return self.log()
        finally:
            self.add_count = saved


def blank_prefix(actions, rewards, terminals, frames=None) -> int:
    """How many of the first (up to 3) rows of an episode's rows are dopamine's blank rows:
    action 0, reward 0, not terminal and (when ``frames`` is given) an all-zero frame,
    contiguous from the first row. Without frames this is an upper bound, for planning."""
    n, most = 0, min(LoggedReplayBuffer.STACK - 1, len(actions))
    while n < most and actions[n] == 0 and rewards[n] == 0 and not terminals[n]:
        if frames is not None and frames[n].any():
            break
        n += 1
    return n
