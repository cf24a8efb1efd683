"""Reference returns for normalised scores, ``100 * (R - min) / (max - min)``.

hopper, halfcheetah, walker2d and ant use D4RL's numbers (``REF_MIN_SCORE``/``REF_MAX_SCORE`` in
d4rl's ``infos.py``: the mean return of a random policy and of the expert its datasets came
from), the same for every dataset of an env, as the original paper reported them.

Humanoid has no D4RL entry. Its Minari datasets carry their own ``ref_min_score`` and
``ref_max_score`` metadata, read here from the local Minari store (never downloaded). The
embedded ``humanoid-collected`` data has no reference: its best behaviour is a balance
controller written for this project, and calling that "expert" (100) would make scores look
comparable to D4RL's when they are not, so it gets None and callers report raw returns.
"""

from __future__ import annotations

import math

from .loading import MINARI_PREFIX

# env -> (random-policy return, expert return), from D4RL.
D4RL_REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def _local_minari_scores(dataset_id: str) -> tuple[float, float] | None:
    from decision_transformer.data.minari_io import (
        DatasetUnavailableError,
        load_minari_dataset,
        minari_reference_scores,
    )

    try:
        dataset = load_minari_dataset(dataset_id, download=False)
    except DatasetUnavailableError:
        return None
    return minari_reference_scores(dataset)


def reference_scores(env: str, dataset: str) -> tuple[float, float] | None:
    """``(min, max)`` reference returns for ``{env}-{dataset}``, or None when there are none.

    ``dataset`` may also be ``minari:<dataset id>`` to read that local Minari dataset's metadata.
    """
    if dataset.startswith(MINARI_PREFIX):
        return _local_minari_scores(dataset[len(MINARI_PREFIX) :])
    if env in D4RL_REFERENCE_SCORES:
        return D4RL_REFERENCE_SCORES[env]
    from decision_transformer.data.minari_io import minari_dataset_ids

    # A dataset converted from Minari (humanoid-medium <- mujoco/humanoid/medium-v0) is scored
    # with its source's references; a concatenation uses the first part that has them.
    for dataset_id in minari_dataset_ids(env, dataset) or ():
        scores = _local_minari_scores(dataset_id)
        if scores is not None:
            return scores
    return None


def normalized_score(ret: float, ref: tuple[float, float]) -> float:
    """D4RL's normalised score: 0 for the random policy's return, 100 for the expert's."""
    low, high = ref
    if not (math.isfinite(low) and math.isfinite(high)) or high == low:
        raise ValueError(f"reference scores must be finite and distinct, got {ref}")
    return 100.0 * (ret - low) / (high - low)
