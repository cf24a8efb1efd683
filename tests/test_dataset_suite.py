"""The dataset suite: its behaviours on the real simulator, its CLI, cache and on-disk format.

Only tiny datasets (a few hundred steps) and a few-iteration ARS run are made here; the suite's
real sizes are built on demand by ``gym/data/make_suite.py``.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from decision_transformer.data import suite
from decision_transformer.data.behaviours import (
    ArsConfig,
    LinearPolicy,
    MixedBehaviour,
    RandomisedPD,
    ars_update,
    episode_return,
    graded_noise_levels,
    train_ars,
)
from decision_transformer.data.loading import check_dataset_available, load_dataset
from decision_transformer.errors import DatasetError

GYM_DIR = Path(__file__).resolve().parents[1] / "gym"
TINY = "humanoid-pd-300"


def _make_suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "data/make_suite.py", *args],
        cwd=GYM_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_same_paths(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for pa, pb in zip(a, b):
        assert pa.keys() == pb.keys()
        for key in pa:
            np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)


def _assert_valid_humanoid(paths: list[dict]) -> None:
    for p in paths:
        steps = len(p["rewards"])
        assert p["observations"].shape == p["next_observations"].shape == (steps, 348)
        assert p["actions"].shape == (steps, 17)
        assert np.isfinite(p["actions"]).all() and np.isfinite(p["observations"]).all()
        assert np.abs(p["actions"]).max() <= 0.4 + 1e-6
        np.testing.assert_array_equal(p["observations"][1:], p["next_observations"][:-1])
        assert p["terminals"][-1] or p["timeouts"][-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A tiny PD dataset made by the documented command, as a user would."""
    out = tmp_path_factory.mktemp("suite")
    result = _make_suite("--name", TINY, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


# --------------------------------------------------------------------------- the PD behaviour
def test_pd_behaviour_is_valid_deterministic_and_drawn_per_episode():
    recipe = suite.recipe_for(TINY)
    first, again = suite.rollout(recipe), suite.rollout(recipe)
    _assert_valid_humanoid(first)
    assert sum(len(p["rewards"]) for p in first) >= 300
    _assert_same_paths(first, again)  # same seed, same data
    _assert_same_paths(suite.rollout(replace(recipe, steps=100)), first[:2])  # a prefix
    other = suite.rollout(replace(recipe, seed=1))
    assert not np.array_equal(first[0]["actions"], other[0]["actions"])

    # Each episode's actions are exactly the PD law of the controller drawn from its own seeded
    # generator, replayed on the stored observations; another episode's draw does not fit.
    env = gymnasium.make("Humanoid-v5")
    pd = RandomisedPD(env, recipe.pd)
    for i in (0, 1):
        controller = pd.draw(np.random.default_rng([recipe.seed, i]))
        replayed = np.array([controller(o.astype(np.float64)) for o in first[i]["observations"]])
        np.testing.assert_allclose(first[i]["actions"], replayed, atol=1e-4)
    wrong = pd.draw(np.random.default_rng([recipe.seed, 1]))
    replayed = np.array([wrong(o.astype(np.float64)) for o in first[0]["observations"]])
    assert np.abs(first[0]["actions"] - replayed).max() > 0.01


def test_pd_controller_reads_joint_angles_and_speeds_from_the_observation():
    env = gymnasium.make("Humanoid-v5")
    pd = RandomisedPD(env)
    obs, _ = env.reset(seed=3)
    model, data = env.unwrapped.model, env.unwrapped.data
    joints = model.actuator_trnid[:, 0]
    np.testing.assert_allclose(obs[pd.angle_index], data.qpos[model.jnt_qposadr[joints]])
    np.testing.assert_allclose(obs[pd.speed_index], data.qvel[model.jnt_dofadr[joints]])


# ------------------------------------------------------------------------ the linear behaviour
def _random_linear_policy(env: gymnasium.Env, seed: int) -> LinearPolicy:
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    return LinearPolicy(
        weights=rng.normal(0.0, 0.3, (act_dim, obs_dim)),
        mean=rng.normal(0.0, 0.1, obs_dim),
        std=rng.uniform(0.5, 2.0, obs_dim),
        low=env.action_space.low.astype(np.float64),
        high=env.action_space.high.astype(np.float64),
    )


def test_linear_behaviour_is_valid_deterministic_and_graded(tmp_path):
    env = gymnasium.make("Humanoid-v5")
    policy = _random_linear_policy(env, 0)
    policy.save(tmp_path / "p.npz", recipe_hash="abc")
    loaded, meta = LinearPolicy.load(tmp_path / "p.npz")
    assert str(meta["recipe_hash"]) == "abc"
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(loaded(obs), policy(obs))

    recipe = replace(suite.recipe_for("humanoid-ars-400"), max_noise=0.3)
    first, again = suite.rollout(recipe, loaded), suite.rollout(recipe, loaded)
    _assert_valid_humanoid(first)
    _assert_same_paths(first, again)
    # The first episode is noise-free (level 0), the later ones are not.
    np.testing.assert_allclose(
        first[0]["actions"],
        [loaded(o.astype(np.float64)) for o in first[0]["observations"]],
        atol=1e-4,
    )
    noisy = first[1]["actions"] - [loaded(o.astype(np.float64)) for o in first[1]["observations"]]
    assert np.abs(noisy).max() > 0.05


def test_graded_noise_levels_cover_the_range_evenly_and_nest():
    levels = graded_noise_levels(1000, 0.3)
    assert levels.min() >= 0.0 and levels.max() < 0.3
    counts, _ = np.histogram(levels, bins=10, range=(0.0, 0.3))
    assert counts.min() >= 95 and counts.max() <= 105
    np.testing.assert_array_equal(graded_noise_levels(10, 0.3), levels[:10])


# ------------------------------------------------------------------- the mixture of behaviours
MIXED = "humanoid-mixed-2500"


@pytest.fixture(scope="module")
def mixed():
    """A small mixed dataset on the real simulator, a random linear policy standing in for the
    trained ARS one (training it takes minutes)."""
    env = gymnasium.make("Humanoid-v5")
    policy = _random_linear_policy(env, 1)
    recipe = suite.recipe_for(MIXED)
    return recipe, policy, suite.rollout(recipe, policy)


def test_mixed_episodes_replay_the_behaviour_each_drew(mixed):
    recipe, policy, paths = mixed
    _assert_valid_humanoid(paths)
    kinds = suite.episode_kinds(recipe, len(paths))
    assert {"balance", "pd", "ars", "random"} <= set(kinds)
    # Each episode's actions are exactly what its own generator's plan says: the behaviour it
    # drew, plus its offset and noise (the same generator's later draws), clipped.
    env = gymnasium.make("Humanoid-v5")
    behaviour = MixedBehaviour(env, recipe.mix, recipe.pd, policy)
    low, high = env.action_space.low, env.action_space.high
    for i, path in enumerate(paths):
        rng = np.random.default_rng([recipe.seed, i])
        plan = behaviour.draw(rng)
        assert plan.kind == kinds[i]
        replayed = []
        for obs in path["observations"].astype(np.float64):
            action = plan.act(obs) + (0.0 if plan.offset is None else plan.offset)
            if plan.noise > 0:
                action = action + plan.noise * rng.standard_normal(action.shape)
            replayed.append(np.clip(action, low, high))
        np.testing.assert_allclose(path["actions"], replayed, atol=2e-3, err_msg=f"episode {i}")


def test_mixed_data_is_short_falls_of_different_skill(mixed):
    recipe, policy, paths = mixed
    kinds = suite.episode_kinds(recipe, len(paths))
    assert all(p["terminals"][-1] for p in paths)  # every episode ends in a fall
    assert np.median([len(p["rewards"]) for p in paths]) < 120
    returns = {
        k: [float(p["rewards"].sum()) for p, kk in zip(paths, kinds) if kk == k] for k in kinds
    }
    # The balance controller is the skilled band, noise around a zero action the unskilled one.
    assert np.mean(returns["balance"]) > 1.5 * np.mean(returns["random"])
    again = suite.rollout(replace(recipe, steps=600), policy)
    _assert_same_paths(again, paths[: len(again)])  # a smaller dataset is a prefix
    other = suite.rollout(replace(recipe, steps=1, seed=1), policy)
    assert not np.array_equal(other[0]["actions"], paths[0]["actions"][: len(other[0]["actions"])])


def test_mixed_dataset_builds_with_its_policy_and_describes_each_behaviour(tmp_path):
    policy = suite.PolicyRecipe(
        "humanoid", ArsConfig(iterations=1, directions=2, top=1, horizon=30)
    )
    recipe = replace(suite.recipe_for("humanoid-mixed-700"), policy=policy)
    record, built = suite.build(recipe, tmp_path, log=lambda line: None)
    assert built and record["policy"]["train_env_steps"] > 0
    assert suite.is_cached(tmp_path, recipe)
    paths = suite.load_suite_dataset(tmp_path, recipe.name)
    kinds = suite.episode_kinds(recipe, len(paths))
    by_kind = record["behaviours"]
    assert sum(v["episodes"] for v in by_kind.values()) == record["episodes"] == len(paths)
    for kind, described in by_kind.items():
        mine = [p for p, k in zip(paths, kinds) if k == kind]
        assert described["steps"] == sum(len(p["rewards"]) for p in mine)
        returns = [float(p["rewards"].astype(np.float64).sum()) for p in mine]
        assert described["returns"]["p50"] == pytest.approx(np.median(returns), rel=1e-5)
    changed = replace(recipe, mix=replace(recipe.mix, balance_noise=(0.0, 0.2)))
    assert not suite.is_cached(tmp_path, changed)


def test_older_families_keep_their_recipe_hashes():
    """The digests the suite's first three families had before the mixed family was added (main
    at ddda480): datasets built then are still recognised as cached."""
    assert suite.recipe_for("humanoid-pd-20k").digest() == "e86962c41d3c4716"
    assert suite.recipe_for("humanoid-ars-100k").digest() == "3a82cdd1b995ce44"
    assert suite.recipe_for("hopper-ars-1m").digest() == "cfe5a4bb61da3b1c"


# --------------------------------------------------------------------------------------- ARS
def test_ars_update_climbs_a_toy_objective():
    """f(W) = -|W - W*|^2 from exact returns of W +/- nu d: far from the optimum every step
    climbs, and 30 steps close most of the gap (the scale-free step then hovers near it)."""
    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 5))

    def f(w: np.ndarray) -> float:
        return -float(((w - target) ** 2).sum())

    w = np.zeros_like(target)
    values = [f(w)]
    for _ in range(30):
        deltas = rng.standard_normal((16, *w.shape))
        plus = np.array([f(w + 0.05 * d) for d in deltas])
        minus = np.array([f(w - 0.05 * d) for d in deltas])
        w = ars_update(w, deltas, plus, minus, top=8, step_size=0.05)
        values.append(f(w))
    assert np.all(np.diff(values[:15]) > 0)
    assert values[-1] > 0.05 * values[0]


def test_ars_update_keeps_only_the_top_directions():
    deltas = np.array([[[1.0]], [[-1.0]], [[5.0]]])
    plus, minus = np.array([2.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.0])
    # Direction 0 (best return 2) and 1 (best 1) are kept, direction 2 (best 0.5) is not.
    step = ars_update(np.zeros((1, 1)), deltas, plus, minus, top=2, step_size=1.0)
    sigma = np.std([2.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(step, [[(2.0 * 1.0 + (-1.0) * -1.0) / (2 * sigma)]])


def test_short_ars_run_improves_hoppers_training_objective():
    """Eight iterations on the real simulator: on what ARS maximises (Hopper's reward less the
    survival bonus, 200-step episodes) the trained policy beats where it started (zero weights)
    on resets it never trained from."""
    env = gymnasium.make("Hopper-v5")
    config = ArsConfig(iterations=8, directions=8, top=4, survival_shift=1.0, horizon=200, seed=1)
    policy, curve = train_ars(env, config)
    assert len(curve["policy_returns"]) == 8 and int(curve["env_steps"]) > 0

    def objective(act) -> float:
        runs = [episode_return(env, act, 100 + k, config.survival_shift, 200)[0] for k in (0, 1, 2)]
        return float(np.mean(runs))

    untrained = replace(policy, weights=np.zeros_like(policy.weights))
    assert objective(policy) > objective(untrained) + 30.0


def test_ars_policy_is_trained_once_then_read_from_its_cache(tmp_path):
    recipe = suite.PolicyRecipe("hopper", ArsConfig(iterations=2, directions=2, top=1, horizon=50))
    said: list[str] = []
    first, _ = suite.ensure_policy(tmp_path, recipe, said.append)
    assert any("training" in line for line in said)
    said.clear()
    second, meta = suite.ensure_policy(tmp_path, recipe, said.append)
    assert not any("training" in line for line in said)
    assert str(meta["recipe_hash"]) == recipe.digest()
    np.testing.assert_array_equal(first.weights, second.weights)
    retrained, _ = suite.ensure_policy(tmp_path / "again", recipe, said.append)
    for key in ("weights", "mean", "std"):  # the same seed trains the same policy
        np.testing.assert_array_equal(getattr(retrained, key), getattr(first, key))
    changed = replace(recipe, ars=replace(recipe.ars, step_size=0.05))
    suite.ensure_policy(tmp_path, changed, said.append)
    assert any("another recipe" in line for line in said)

    # A tiny ARS dataset from that policy goes through build and the project's loader.
    data = replace(suite.recipe_for("hopper-ars-120"), policy=recipe)
    record, built = suite.build(data, tmp_path, log=said.append)
    assert built and record["policy"]["train_env_steps"] > 0
    loaded = load_dataset(tmp_path, "hopper", "ars-120")
    assert loaded.observations.shape == (record["steps"], 11)
    assert loaded.actions.shape == (record["steps"], 3)


# ------------------------------------------------------------------ the CLI, format and cache
def test_tiny_dataset_round_trips_through_the_project_loader(tiny):
    out, stdout = tiny
    assert f"wrote {out / (TINY + '-v2.pkl')}" in stdout
    assert TINY in stdout.splitlines()[-1]  # the description table's row
    dataset = load_dataset(out, "humanoid", "pd-300")
    raw = suite.load_suite_dataset(out, TINY)
    steps = sum(len(p["rewards"]) for p in raw)
    assert steps >= 300
    assert dataset.observations.shape == (steps, 348)
    assert dataset.actions.shape == (steps, 17)
    # Its description names what made it (the same recipe differs across mujoco versions and
    # CPUs) and a hash of its content, printed when it is made.
    described = suite.read_description(out, TINY)
    assert described["versions"]["mujoco"] == importlib.metadata.version("mujoco")
    assert f"content {described['content_hash']}, made with " in stdout
    raw[0]["actions"] = raw[0]["actions"] * 0.5
    assert suite.content_hash(raw) != described["content_hash"]
    assert len(dataset.returns) == len(raw)
    np.testing.assert_allclose(
        dataset.returns, [p["rewards"].astype(np.float64).sum() for p in raw], rtol=1e-6
    )
    assert dataset.returns.std() > 0  # the per-episode draw spreads the returns

    described = json.loads((out / f"{TINY}-v2.json").read_text())
    assert described["episodes"] == len(raw) and described["steps"] == steps
    for q in (10, 50, 90):
        assert described["returns"][f"p{q}"] == pytest.approx(np.percentile(dataset.returns, q))
    assert described["returns"]["max"] == pytest.approx(dataset.returns.max())
    assert described["train_with"] == "--env humanoid --dataset pd-300"


def test_same_command_same_data_then_cached_until_the_recipe_changes(tiny, tmp_path):
    file = tmp_path / f"{TINY}-v2.pkl"
    assert _make_suite("--name", TINY, "--out", str(tmp_path)).returncode == 0
    _assert_same_paths(
        suite.load_suite_dataset(tiny[0], TINY), suite.load_suite_dataset(tmp_path, TINY)
    )
    before = file.stat().st_mtime_ns
    again = _make_suite("--name", TINY, "--out", str(tmp_path))
    assert again.returncode == 0 and "up to date" in again.stdout
    assert file.stat().st_mtime_ns == before

    reseeded = _make_suite("--name", TINY, "--out", str(tmp_path), "--seed", "5")
    assert reseeded.returncode == 0 and "wrote" in reseeded.stdout
    assert file.stat().st_mtime_ns != before
    described = json.loads((tmp_path / f"{TINY}-v2.json").read_text())
    assert described["recipe"]["seed"] == 5
    assert described["recipe_hash"] == suite.recipe_for(TINY, seed=5).digest()

    # A recipe changed in code (not through a flag) is no longer cached either.
    recipe = suite.recipe_for(TINY, seed=5)
    assert suite.is_cached(tmp_path, recipe)
    wider = replace(recipe, pd=replace(recipe.pd, posture_std=0.2))
    assert not suite.is_cached(tmp_path, wider)
    # A data file whose description is missing (a build cut short) is rebuilt.
    (tmp_path / f"{TINY}-v2.json").unlink()
    assert not suite.is_cached(tmp_path, recipe)


def test_minari_copy_trains_the_same_data(tiny, tmp_path, monkeypatch):
    out, _ = tiny
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    result = subprocess.run(
        [sys.executable, "data/make_suite.py", "--name", TINY, "--out", str(out), "--minari"],
        cwd=GYM_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout  # the pickle is reused, the Minari copy is new
    assert "wrote local Minari dataset suite/humanoid/pd-300-v0" in result.stdout
    from_minari = load_dataset(tmp_path, "humanoid", "minari:suite/humanoid/pd-300-v0")
    from_pickle = load_dataset(out, "humanoid", "pd-300")
    for key in ("observations", "actions", "rewards", "returns", "lengths"):
        np.testing.assert_array_equal(getattr(from_minari, key), getattr(from_pickle, key))


def test_out_must_be_a_folder(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    result = _make_suite("--name", TINY, "--out", str(file))
    assert result.returncode == 2 and "is a file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_suite_dataset_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(DatasetError, match=r"make_suite\.py --name humanoid-pd-20k"):
        check_dataset_available(tmp_path, "humanoid", "pd-20k")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--name", "humanoid-walk-20k"], "not a suite dataset"),
        (["--size", "small"], "--size picks sizes for --all"),
        ([], "--name NAME"),
        (["--all", "--size", "huge"], "invalid choice"),
    ],
)
def test_bad_requests_fail_with_one_line(args, words, tmp_path):
    result = _make_suite(*args, "--out", str(tmp_path))
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_suite_names_cover_seven_families_at_three_sizes():
    names = suite.suite_names()
    assert len(names) == 21 and "humanoid-pd-20k" in names and "hopper-ars-1m" in names
    assert "humanoid-mixed-20k" in names and "humanoid-mixed-100k" in names
    for env in ("walker2d", "halfcheetah", "ant"):
        assert suite.parse_name(f"{env}-ars-100k") == (env, "ars", 100_000)
    assert [suite.parse_name(n)[2] for n in names[:3]] == [20_000, 100_000, 1_000_000]
    assert suite.parse_name("humanoid-ars-300") == ("humanoid", "ars", 300)
    assert suite.parse_name("humanoid-mixed-20k") == ("humanoid", "mixed", 20_000)
