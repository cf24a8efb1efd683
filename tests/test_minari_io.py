"""Minari -> project format, on a Minari dataset built here from real Humanoid-v5 rollouts.

Nothing is downloaded: the dataset lives in a temporary MINARI_DATASETS_PATH, and the download
script runs with HF_HUB_OFFLINE=1 so a missing dataset fails at once (and could not fetch
gigabytes on a machine that does have a network).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import minari
import numpy as np
import pytest
from decision_transformer.data.minari_io import (
    DatasetUnavailableError,
    env_name_for_minari,
    load_minari_dataset,
    minari_dataset_ids,
    minari_reference_scores,
    paths_from_minari,
)
from decision_transformer.data.pickle_io import load_paths_file
from decision_transformer.data.scores import (
    D4RL_REFERENCE_SCORES,
    normalized_score,
    reference_scores,
)
from minari.data_collector import EpisodeBuffer

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = "mujoco/humanoid/medium-v0"  # the id the download script maps humanoid-medium to
MISSING_ID = "mujoco/humanoid/expert-v0"
REF = (-12.5, 4321.0)


def _raw_episode(env: gymnasium.Env, seed: int) -> dict[str, np.ndarray]:
    """One episode exactly as the simulator produced it, in Minari's T+1 layout."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    while True:
        action = rng.uniform(-0.4, 0.4, size=17).astype(np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
        if terminated or truncated:
            break
    return {
        "observations": np.array(observations),
        "actions": np.array(actions),
        "rewards": np.array(rewards),
        "terminations": np.array(terms),
        "truncations": np.array(truncs),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A local Minari store holding DATASET_ID: two episodes cut by the time limit, two that
    end because the humanoid fell."""
    path = tmp_path_factory.mktemp("minari_store")
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    short = gymnasium.make("Humanoid-v5", max_episode_steps=12)
    full = gymnasium.make("Humanoid-v5")
    raw = [_raw_episode(short, 0), _raw_episode(full, 1), _raw_episode(short, 2)]
    raw.append(_raw_episode(full, 3))
    buffers = [
        EpisodeBuffer(
            id=i,
            observations=ep["observations"],
            actions=ep["actions"],
            rewards=ep["rewards"].tolist(),
            terminations=ep["terminations"].tolist(),
            truncations=ep["truncations"].tolist(),
        )
        for i, ep in enumerate(raw)
    ]
    with warnings.catch_warnings():  # Minari's reminders to set author, e-mail, code link
        warnings.simplefilter("ignore", UserWarning)
        minari.create_dataset_from_buffers(
            DATASET_ID,
            buffers,
            env="Humanoid-v5",
            eval_env="Humanoid-v5",
            algorithm_name="uniform random",
            ref_min_score=REF[0],
            ref_max_score=REF[1],
        )
    yield path, raw
    if previous is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = previous


def test_episodes_convert_with_t_plus_one_observations_split(store):
    _, raw = store
    paths = paths_from_minari(load_minari_dataset(DATASET_ID, download=False))
    assert len(paths) == len(raw)
    for path, ep in zip(paths, raw):
        steps = len(ep["rewards"])
        assert ep["observations"].shape == (steps + 1, 348)  # Minari's layout...
        assert path["observations"].shape == (steps, 348)  # ...and ours
        assert path["next_observations"].shape == (steps, 348)
        assert path["actions"].shape == (steps, 17)
        np.testing.assert_allclose(path["observations"], ep["observations"][:-1], rtol=1e-6)
        np.testing.assert_allclose(path["next_observations"], ep["observations"][1:], rtol=1e-6)
        np.testing.assert_array_equal(path["observations"][1:], path["next_observations"][:-1])
        np.testing.assert_allclose(path["rewards"], ep["rewards"], rtol=1e-6)
        np.testing.assert_allclose(path["actions"], ep["actions"])
        np.testing.assert_array_equal(path["terminals"], ep["terminations"])
        np.testing.assert_array_equal(path["timeouts"], ep["truncations"])
        for key, dtype in [
            ("observations", np.float32),
            ("next_observations", np.float32),
            ("actions", np.float32),
            ("rewards", np.float32),
            ("terminals", np.bool_),
            ("timeouts", np.bool_),
        ]:
            assert path[key].dtype == dtype, key


def test_terminal_and_timeout_flags_stay_apart(store):
    paths = paths_from_minari(load_minari_dataset(DATASET_ID, download=False))
    cut, fell = paths[0], paths[1]
    assert len(cut["rewards"]) == 12
    assert cut["timeouts"][-1] and not cut["timeouts"][:-1].any() and not cut["terminals"].any()
    assert 12 < len(fell["rewards"]) < 1000  # random actions topple it long before the limit
    assert fell["terminals"][-1] and not fell["terminals"][:-1].any()
    assert not fell["timeouts"].any()


def test_env_name_and_reference_scores_come_from_metadata(store):
    dataset = load_minari_dataset(DATASET_ID, download=False)
    assert env_name_for_minari(dataset) == "humanoid"
    assert minari_reference_scores(dataset) == REF
    assert reference_scores("humanoid", f"minari:{DATASET_ID}") == REF
    # The converted humanoid-medium file is scored with its Minari source's references.
    assert reference_scores("humanoid", "medium") == REF
    assert reference_scores("humanoid", "medium-expert") == REF  # medium part is local
    assert reference_scores("humanoid", "expert") is None  # not in the store
    assert reference_scores("humanoid", "collected") is None
    assert normalized_score(REF[0], REF) == pytest.approx(0.0)
    assert normalized_score(REF[1], REF) == pytest.approx(100.0)
    assert normalized_score(0.5 * (REF[0] + REF[1]), REF) == pytest.approx(50.0)


def test_d4rl_reference_scores_match_d4rl():
    assert reference_scores("hopper", "medium") == (-20.272305, 3234.3)
    assert reference_scores("walker2d", "medium-replay") == (1.629008, 4592.3)
    assert set(D4RL_REFERENCE_SCORES) == {"hopper", "halfcheetah", "walker2d", "ant"}
    assert normalized_score(12135.0, reference_scores("halfcheetah", "expert")) == 100.0
    with pytest.raises(ValueError):
        normalized_score(1.0, (3.0, 3.0))


def test_dataset_ids_cover_medium_expert_and_not_medium_replay():
    assert minari_dataset_ids("humanoid", "medium") == ("mujoco/humanoid/medium-v0",)
    assert minari_dataset_ids("hopper", "medium-expert") == (
        "mujoco/hopper/medium-v0",
        "mujoco/hopper/expert-v0",
    )
    assert minari_dataset_ids("hopper", "medium-replay") is None
    assert minari_dataset_ids("reacher2d", "medium") is None


def test_missing_dataset_is_one_clear_error(store):
    with pytest.raises(DatasetUnavailableError) as info:
        load_minari_dataset(MISSING_ID, download=False)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert MISSING_ID in message
    assert "python data/collect_dataset.py --env humanoid --out data" in message


def _run_script(args: list[str], cwd: Path, store_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINARI_DATASETS_PATH=str(store_path), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_download_script_converts_local_and_reports_missing(store, tmp_path):
    store_path, raw = store
    out = tmp_path / "out"
    result = _run_script(
        [
            "gym/data/download_d4rl_datasets.py",
            "--env",
            "humanoid",
            "--datasets",
            "medium",
            "expert",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        store_path=store_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    missing = [line for line in output.splitlines() if MISSING_ID in line]
    assert len(missing) == 1, output
    assert "collect_dataset.py --env humanoid" in missing[0]
    assert not (out / "humanoid-expert-v2.pkl").exists()

    converted = load_paths_file(out / "humanoid-medium-v2.pkl")
    reference = paths_from_minari(load_minari_dataset(DATASET_ID, download=False))
    assert len(converted) == len(raw)
    for got, want in zip(converted, reference):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_download_script_fails_only_when_nothing_converts(store, tmp_path):
    store_path, _ = store
    # From gym/, as the original instructions ran it: the script finds its package itself.
    result = _run_script(
        [
            "data/download_d4rl_datasets.py",
            "--env",
            "humanoid",
            "--datasets",
            "expert",
            "medium-replay",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT / "gym",
        store_path=store_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "Traceback" not in output and len(result.stderr.strip().splitlines()) == 1
    assert len([line for line in output.splitlines() if "humanoid-expert" in line]) == 1
    assert len([line for line in output.splitlines() if "humanoid-medium-replay" in line]) == 1
    assert list(tmp_path.iterdir()) == []
