"""Minari datasets in, the project's ``{env}-{dataset}-v2.pkl`` trajectory format out.

Minari stores each episode with T+1 observations (the last one is where the episode ended) and
separate ``terminations`` and ``truncations``; the project's format has T ``observations`` and T
``next_observations`` and calls the two flags ``terminals`` and ``timeouts``.

Minari's hosted MuJoCo datasets (``mujoco/<env>/{simple,medium,expert}-v0``) were collected on
the v5 gymnasium environments this suite uses. Minari has no port of D4RL's locomotion datasets
(its ``D4RL/`` namespace holds antmaze, pointmaze, kitchen and the Adroit hand tasks), so D4RL's
``medium-replay`` has no Minari counterpart and ``medium-expert`` is the concatenation of
``medium`` and ``expert``, as D4RL itself built it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from decision_transformer.envs import ENV_SPECS
from decision_transformer.errors import UserError

from .dataset_files import how_to_make

if TYPE_CHECKING:  # minari is imported lazily: it is slow to import and only some paths need it
    import minari


def offline_alternative(env: str | None = None) -> str:
    """The command that makes a dataset for ``env`` with no download."""
    return how_to_make(env, "collected")


# Suite dataset name -> the Minari datasets it is made of (concatenated in this order).
_MINARI_FLAVOURS: dict[str, tuple[str, ...]] = {
    "simple": ("simple",),
    "medium": ("medium",),
    "expert": ("expert",),
    "medium-expert": ("medium", "expert"),
}


_NETWORK_ERROR_NAMES = ("Connect", "Network", "Timeout", "Offline")


class DatasetUnavailableError(UserError, ValueError):
    """A dataset is neither in the local Minari store nor downloadable; the message is one line
    naming it and the offline alternative. ``offline`` says whether the cause was the network."""

    def __init__(self, message: str, offline: bool = False):
        super().__init__(message)
        self.offline = offline


def minari_dataset_ids(env: str, dataset: str) -> tuple[str, ...] | None:
    """The Minari ids behind ``{env}-{dataset}`` (e.g. humanoid, medium-expert -> the medium and
    expert ids), or None when Minari hosts no equivalent."""
    if env not in ENV_SPECS or env == "reacher2d" or dataset not in _MINARI_FLAVOURS:
        return None
    return tuple(f"mujoco/{env}/{flavour}-v0" for flavour in _MINARI_FLAVOURS[dataset])


def minari_store_path() -> str:
    """Where Minari keeps local datasets (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.join(
        os.path.expanduser("~"), ".minari", "datasets"
    )


def _is_network_error(err: BaseException | None) -> bool:
    # huggingface_hub and its HTTP client raise their own classes, not always ConnectionError,
    # so class names along the exception chain are the dependable signal. (Plain OSError is not
    # enough: an HTTP 404 from the hub is an OSError too.)
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        names = [cls.__name__ for cls in type(err).__mro__]
        if any(key in name for name in names for key in _NETWORK_ERROR_NAMES):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def _quiet_download() -> Iterator[None]:
    """Silence the retry chatter and warnings a failing download prints on the way."""
    # huggingface_hub sets its logger's level when the logger is first asked for, which would
    # undo ours mid-download; asking for it first makes that happen now.
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.get_logger()
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "httpx", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def unavailable_message(dataset_id: str, reason: str) -> str:
    """The one line that reports a Minari dataset as unavailable, with the offline alternative."""
    parts = dataset_id.split("/")
    env = parts[-2] if len(parts) >= 3 and parts[-2] in ENV_SPECS else None
    return (
        f"Minari dataset '{dataset_id}' is not in the local store ({minari_store_path()}) "
        f"and {reason}; offline alternative: {offline_alternative(env)}"
    )


def load_minari_dataset(dataset_id: str, download: bool = True) -> minari.MinariDataset:
    """Load ``dataset_id`` from the local Minari store as is, downloading it only if absent.

    Raises :class:`DatasetUnavailableError` (one line, naming the id and the offline
    alternative) when the dataset is not local and cannot be downloaded.
    """
    import minari

    with _quiet_download():
        try:
            return minari.load_dataset(dataset_id, download=False)
        except FileNotFoundError:
            pass
        except Exception as err:
            raise DatasetUnavailableError(
                unavailable_message(dataset_id, f"the local copy is unreadable: {_one_line(err)}")
            ) from None
        if not download:
            raise DatasetUnavailableError(
                unavailable_message(dataset_id, "downloading is off"), offline=True
            )
        try:
            minari.download_dataset(dataset_id)
            return minari.load_dataset(dataset_id, download=False)
        except Exception as err:
            offline = _is_network_error(err)
            reason = "no network" if offline else _one_line(err)
            raise DatasetUnavailableError(
                unavailable_message(dataset_id, f"could not be downloaded ({reason})"),
                offline=offline,
            ) from None


def paths_from_minari(dataset: minari.MinariDataset) -> list[dict[str, np.ndarray]]:
    """Convert every episode of a loaded Minari dataset to the project's trajectory dicts."""
    paths = []
    episodes = dataset.iterate_episodes()
    for episode in tqdm(episodes, total=dataset.total_episodes, desc=dataset.id, unit="ep"):
        observations = episode.observations
        if not isinstance(observations, np.ndarray):
            kind = type(observations).__name__
            raise ValueError(f"{dataset.id}: only flat Box observations convert, got {kind}")
        steps = len(episode.rewards)
        if steps == 0:
            continue
        if len(observations) != steps + 1:
            raise ValueError(
                f"{dataset.id} episode {episode.id}: {len(observations)} observations for "
                f"{steps} steps (Minari stores steps + 1)"
            )
        paths.append(
            {
                "observations": np.asarray(observations[:-1], dtype=np.float32),
                "next_observations": np.asarray(observations[1:], dtype=np.float32),
                "actions": np.asarray(episode.actions, dtype=np.float32),
                "rewards": np.asarray(episode.rewards, dtype=np.float32).reshape(steps),
                "terminals": np.asarray(episode.terminations, dtype=bool).reshape(steps),
                "timeouts": np.asarray(episode.truncations, dtype=bool).reshape(steps),
            }
        )
    return paths


def minari_reference_scores(dataset: minari.MinariDataset) -> tuple[float, float] | None:
    """``(ref_min_score, ref_max_score)`` from the dataset's metadata, or None if not recorded."""
    metadata = dataset.storage.metadata
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if low is None or high is None:
        return None
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or high == low:
        return None
    return low, high


def _base_name(gym_id: str) -> str:
    # "Humanoid-v5" -> "humanoid"; namespaces ("decision_transformer/...") are dropped too.
    return re.sub(r"-v\d+$", "", gym_id.split("/")[-1]).lower()


def env_name_for_minari(dataset: minari.MinariDataset) -> str:
    """The suite env name ('humanoid') of a Minari dataset, from its env spec (``Humanoid-v5``),
    falling back to the ``namespace/<env>/name`` part of its id."""
    by_base = {_base_name(spec.gym_id): name for name, spec in ENV_SPECS.items()}
    spec = dataset.env_spec
    if spec is not None and _base_name(spec.id) in by_base:
        return by_base[_base_name(spec.id)]
    parts = dataset.id.split("/")
    if len(parts) >= 3 and parts[-2] in ENV_SPECS:
        return parts[-2]
    env_id = spec.id if spec is not None else "no env spec"
    raise ValueError(
        f"Minari dataset '{dataset.id}' ({env_id}) matches no suite env: {', '.join(ENV_SPECS)}"
    )
