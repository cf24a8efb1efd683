"""The embedded Humanoid dataset: made by a real subprocess from the real simulator."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from decision_transformer.data.humanoid_controller import (
    BalanceController,
    knee_bend_offset,
    knee_bends,
    noise_levels,
)
from decision_transformer.data.minari_io import load_minari_dataset, paths_from_minari
from decision_transformer.data.pickle_io import load_paths_file

GYM_DIR = Path(__file__).resolve().parents[1] / "gym"


def _collect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "data/collect_dataset.py", *args],
        cwd=GYM_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory: pytest.TempPathFactory):
    """The dataset exactly as the documented command makes it (defaults: 1000 episodes)."""
    out = tmp_path_factory.mktemp("collected")
    start = time.perf_counter()
    result = _collect("--env", "humanoid", "--out", str(out))
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    file = out / "humanoid-collected-v2.pkl"
    return file, load_paths_file(file), result.stdout, seconds


def test_default_run_is_summarised(default_dataset):
    # Its speed (under 2 minutes on 2 cores) is printed by the run itself, not asserted here.
    file, paths, stdout, _ = default_dataset
    returns = np.array([p["rewards"].sum() for p in paths])
    steps = sum(len(p["rewards"]) for p in paths)
    made = re.search(r"in \d+\.\d s: episodes 1000, steps (\d+), .* p90 ([\d.]+) / max", stdout)
    assert made and int(made[1]) == steps
    assert float(made[2]) == pytest.approx(np.percentile(returns, 90), abs=0.05)
    assert f"numpy {np.__version__}" in stdout and f"mujoco {_version('mujoco')}" in stdout


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def test_default_dataset_records_what_made_it(default_dataset):
    """Beside the file: its fingerprint (counted again here from the file itself) and the
    versions and CPU that made it, since the same seed gives other data on another stack."""
    file, paths, stdout, _ = default_dataset
    record = json.loads(file.with_suffix(".json").read_text())
    fp = record["fingerprint"]
    returns = np.array([p["rewards"].sum() for p in paths])
    assert fp["episodes"] == len(paths) == 1000
    assert fp["steps"] == sum(len(p["rewards"]) for p in paths)
    for q in (10, 50, 90):
        assert fp["returns"][f"p{q}"] == pytest.approx(np.percentile(returns, q), abs=0.05)
    assert fp["returns"]["max"] == pytest.approx(returns.max(), abs=0.05)
    assert f"content {fp['content_hash']}" in stdout
    assert record["settings"]["episodes"] == 1000 and record["settings"]["seed"] == 0
    versions = record["versions"]
    for dist in ("mujoco", "gymnasium", "numpy"):
        assert versions[dist] == _version(dist)
    assert versions["cpu"] and versions["cpu"] in Path("/proc/cpuinfo").read_text()

    # The hash is of the content: one reward changed in the last place changes it.
    from decision_transformer.provenance import content_hash

    changed = [dict(p) for p in paths]
    changed[-1]["rewards"] = np.nextafter(changed[-1]["rewards"], np.inf)
    assert content_hash(changed) != fp["content_hash"] == content_hash(paths)


def test_default_dataset_has_a_real_spread_of_returns(default_dataset):
    _, paths, _, _ = default_dataset
    returns = np.array([p["rewards"].sum() for p in paths])
    lengths = np.array([len(p["rewards"]) for p in paths])
    assert len(paths) >= 50
    assert returns.max() >= 2 * returns.min()
    assert lengths.max() >= 500 and lengths.min() <= 100  # long best, short worst
    # The recipe's level is what explains the return: quieter, straighter half, higher returns.
    half = len(paths) // 2
    assert returns[:half].mean() > 2 * returns[half:].mean()


def test_low_returns_come_from_a_different_mean_behaviour(default_dataset):
    """Replaying the controller on the stored observations: the actions differ from it by the
    episode's knee bend on the two knee motors, on average, and by nothing elsewhere."""
    _, paths, _, _ = default_dataset
    controller = BalanceController()
    env = gymnasium.make("Humanoid-v5")
    bends = knee_bends(len(paths))
    knees = np.flatnonzero(knee_bend_offset(env, 1.0))
    assert len(knees) == 2
    for chosen in (slice(0, 100), slice(-100, None)):  # the straightest and the most bent
        obs = np.concatenate([p["observations"] for p in paths[chosen]])
        act = np.concatenate([p["actions"] for p in paths[chosen]])
        steps = [len(p["actions"]) for p in paths[chosen]]
        residual = act - np.array([controller(o) for o in obs])
        expected = np.average(bends[chosen], weights=steps)
        others = np.delete(residual, knees, axis=1)
        # Clipping at the action bounds shaves a little off; the noise averages out over the steps.
        np.testing.assert_allclose(residual[:, knees].mean(0), -expected, atol=0.02)
        assert np.abs(others.mean(0)).max() < 0.02


def test_dataset_is_in_the_project_format(default_dataset):
    _, paths, _, _ = default_dataset
    for path in paths:
        steps = len(path["rewards"])
        assert path["observations"].shape == (steps, 348)
        assert path["next_observations"].shape == (steps, 348)
        assert path["actions"].shape == (steps, 17)
        assert path["rewards"].shape == path["terminals"].shape == path["timeouts"].shape
        for key in ("observations", "next_observations", "actions", "rewards"):
            assert path[key].dtype == np.float32, key
        assert path["terminals"].dtype == path["timeouts"].dtype == np.bool_
        np.testing.assert_array_equal(path["observations"][1:], path["next_observations"][:-1])
        assert np.all(np.abs(path["actions"]) <= 0.4 + 1e-6)
        assert not path["terminals"][:-1].any() and not path["timeouts"][:-1].any()
        # An episode ends either by falling (terminal) or at the 1000-step limit (timeout).
        if steps == 1000:
            assert path["timeouts"][-1] and not path["terminals"][-1]
        else:
            assert path["terminals"][-1] and not path["timeouts"][-1]
            assert path["next_observations"][-1][0] < 1.0  # torso height left the healthy range


def test_best_behaviour_is_learnable_from_observations(default_dataset):
    """A linear least-squares policy fitted to the best tenth of the episodes (no noise or bend
    labels) must reach the dataset's 90th-percentile return: the good behaviour is a function
    of the state, learnable by a model that knows which episodes were good."""
    _, paths, _, _ = default_dataset
    returns = np.array([p["rewards"].sum() for p in paths])
    best = [p for p, r in zip(paths, returns) if r >= np.percentile(returns, 90)]
    obs = np.concatenate([p["observations"] for p in best]).astype(np.float64)
    act = np.concatenate([p["actions"] for p in best]).astype(np.float64)
    mean, std = obs.mean(0), obs.std(0) + 1e-6
    features = np.hstack([(obs - mean) / std, np.ones((len(obs), 1))])
    weights = np.linalg.solve(
        features.T @ features + 1e-3 * np.eye(features.shape[1]), features.T @ act
    )
    target = np.percentile(returns, 90)
    env = gymnasium.make("Humanoid-v5")
    achieved = []
    for seed in (500, 501, 502):
        o, _ = env.reset(seed=seed)
        total = 0.0
        for _ in range(1000):
            a = np.clip(np.append((o - mean) / std, 1.0) @ weights, -0.4, 0.4)
            o, r, terminated, truncated, _ = env.step(a)
            total += r
            if terminated or truncated:
                break
        achieved.append(total)
    assert np.median(achieved) >= target, (achieved, target)


def test_existing_file_is_kept_unless_overwrite(default_dataset):
    file, _, _, _ = default_dataset
    before = file.stat().st_mtime_ns
    result = _collect("--out", str(file.parent))
    assert result.returncode == 0
    assert "already exists" in result.stdout
    assert file.stat().st_mtime_ns == before


def test_same_seed_same_data_and_minari_copy(tmp_path, monkeypatch):
    store = tmp_path / "store"
    env = dict(os.environ, MINARI_DATASETS_PATH=str(store))
    args = ["--episodes", "3", "--noise", "0.3", "--seed", "7"]
    first = _collect(
        *args, "--out", str(tmp_path / "a"), "--minari_id", "test/humanoid/c-v0", env=env
    )
    second = _collect(*args, "--out", str(tmp_path / "b"), env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a = load_paths_file(tmp_path / "a" / "humanoid-collected-v2.pkl")
    b = load_paths_file(tmp_path / "b" / "humanoid-collected-v2.pkl")
    assert len(a) == len(b) == 3
    for pa, pb in zip(a, b):
        for key in pa:
            np.testing.assert_array_equal(pa[key], pb[key])

    # The local Minari copy converts back to the very same trajectories.
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    back = paths_from_minari(load_minari_dataset("test/humanoid/c-v0", download=False))
    assert len(back) == 3
    for pa, pm in zip(a, back):
        for key in pa:
            np.testing.assert_array_equal(pa[key], pm[key])


def test_bad_requests_fail_with_one_line():
    result = _collect("--env", "hopper", "--out", "unused")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--policy" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bent = _collect("--env", "hopper", "--policy", "x.zip", "--knee_bend", "0.1", "--out", "unused")
    assert bent.returncode == 2 and "Traceback" not in bent.stderr
    assert len(bent.stderr.strip().splitlines()) == 1
    assert "--knee_bend is for humanoid only" in bent.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("stable_baselines3") is not None,
    reason="Stable-Baselines3 is installed, so the missing-dependency message cannot show",
)
def test_policy_without_sb3_says_what_to_install(tmp_path):
    result = _collect("--policy", str(tmp_path / "model.zip"), "--out", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert "stable-baselines3" in result.stderr


def test_controller_stands_a_full_episode_without_noise():
    controller = BalanceController()
    env = gymnasium.make("Humanoid-v5")
    obs, _ = env.reset(seed=12345)
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(controller(obs))
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            break
    assert steps == 1000 and not terminated
    assert total > 4800


def test_noise_levels_rise_evenly():
    levels = noise_levels(60, 0.15)
    assert levels.shape == (60,)
    assert levels[0] == pytest.approx(0.35 * 0.15) and levels[-1] == pytest.approx(0.15)
    assert np.all(np.diff(levels) > 0)


def test_knee_bends_rise_evenly_and_bend_only_the_knees():
    bends = knee_bends(60, 0.15)
    assert bends[0] == 0.0 and bends[-1] == pytest.approx(0.15)
    assert np.allclose(np.diff(bends), 0.15 / 59)
    offset = knee_bend_offset(gymnasium.make("Humanoid-v5"), 0.1)
    assert offset.shape == (17,) and (offset == -0.1).sum() == 2 and (offset == 0).sum() == 15
    with pytest.raises(ValueError, match="Humanoid only"):
        knee_bend_offset(gymnasium.make("Hopper-v5"), 0.1)


def test_readme_main_command_runs_as_written(default_dataset, tmp_path):
    """The README's fresh-machine main job, step by step, with only its length cut down."""
    readme = (GYM_DIR.parent / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("pip install -r requirements_qwen"))
    steps = [shlex.split(part) for part in line.split(" && ")]
    assert steps[1] == ["cd", "gym"]
    collect, train = steps[2], steps[3]
    assert collect[:2] == ["python", "data/collect_dataset.py"]
    assert train[:2] == ["python", "experiment_qwen.py"]
    assert "--dataset" in train and train[train.index("--dataset") + 1] == "collected"

    data_dir = default_dataset[0].parent
    out = collect.index("--out") + 1
    made = _collect(*collect[2:out], str(data_dir), *collect[out + 1 :])
    assert made.returncode == 0 and "already exists" in made.stdout  # made only if missing

    shorter = ["--max_iters", "1", "--num_steps_per_iter", "3", "--num_eval_episodes", "2"]
    ran = subprocess.run(
        [sys.executable, *train[1:], *shorter, "--data_dir", str(data_dir), "--out_dir", tmp_path],
        cwd=GYM_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "dataset returns: mean" in ran.stdout
    # One line per target, the dataset's best return, its median and its 10th percentile.
    assert len(re.findall(r"achieved return at target [\d.]+: [\d.]+ ± [\d.]+", ran.stdout)) == 3


def _lock() -> dict[str, str]:
    lines = (GYM_DIR.parent / "constraints.txt").read_text().splitlines()
    return dict(x.split("==") for x in lines if x and not x.startswith("#"))


def test_embedded_dataset_is_the_one_the_readme_states(default_dataset):
    """The README's fingerprint of the embedded dataset (steps, content hash) is what the
    documented command makes on the locked stack and the CPU family the README names. On other
    versions or another CPU the simulator's floating point differs, so it is compared only where
    it can be exact; the versions the README names must be the lock's everywhere."""
    readme = (GYM_DIR.parent / "README.md").read_text()
    bullet = " ".join(readme.split("**The embedded Humanoid dataset**")[1].split("\n- ")[0].split())
    stated = re.search(
        r"(\d+) episodes, ([\d,]+) steps, .*content hash `([0-9a-f]+)`, made with "
        r"mujoco ([\w.]+) and numpy ([\w.]+) on an? ([\w ]+?), ",
        bullet,
    )
    assert stated, bullet
    episodes, steps, digest, mujoco, numpy, cpu = stated.groups()
    lock = _lock()
    assert (mujoco, numpy) == (lock["mujoco"], lock["numpy"]), "README names the locked stack"

    here = {d: _version(d) for d in ("mujoco", "numpy", "gymnasium")}
    if any(here[d] != lock[d] for d in here):
        pytest.skip(f"not the locked stack ({here}): the simulator's numbers differ in digits")
    if cpu not in Path("/proc/cpuinfo").read_text():
        pytest.skip(f"not an {cpu}: another CPU's floating point gives another dataset")
    file, paths, _, _ = default_dataset
    fp = json.loads(file.with_suffix(".json").read_text())["fingerprint"]
    assert (fp["episodes"], fp["steps"]) == (int(episodes), int(steps.replace(",", "")))
    assert fp["content_hash"] == digest
