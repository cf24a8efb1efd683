"""The dataset suite: datasets of different character, each made from the real simulator by a
seeded recipe, built on demand and cached.

A suite name is ``<env>-<behaviour>-<steps>``, e.g. ``humanoid-pd-20k``; the dataset is written
as ``{data_dir}/humanoid-pd-20k-v2.pkl`` in the project's trajectory format, so a run trains on it
with ``--env humanoid --dataset pd-20k``. ``<steps>`` is ``20k``, ``100k``, ``1m`` (the suite's
three sizes) or any count such as ``300``: episodes are rolled out until at least that many
steps are stored (the last episode is kept whole). The behaviours (``behaviours.py`` says how each
is made):

- ``humanoid-pd``: Humanoid-v5, a PD controller whose gains and target posture are drawn per
  episode (no action noise: the draw is the spread);
- ``humanoid-ars``: Humanoid-v5, a linear policy trained here by ARS, rolled out with graded
  per-episode action noise;
- ``hopper-ars``: Hopper-v5, the same for Hopper;
- ``walker2d-ars``, ``halfcheetah-ars``, ``ant-ars``: Walker2d-v5, HalfCheetah-v5, Ant-v5, the
  same recipe (the bodies a multi-task run, ``--tasks``, trains one model over).
- ``humanoid-mixed``: Humanoid-v5, a mixture: each episode draws its behaviour (the balance
  controller sinking at a drawn knee bend under drawn noise, a randomised PD controller, the ARS
  policy with drawn noise, or noise around a zero action), so the data is many short episodes
  ending in falls, of different skill and noise (issue 34's shape).

Episode ``i`` resets with seed ``seed + i`` and draws its randomness from
``default_rng([seed, i])``, so a smaller dataset is a prefix of a larger one with the same seed.
A mixed dataset's description also counts its episodes, steps and return percentiles per
behaviour (``behaviours``).

Caching: beside each dataset a JSON description (``...-v2.json``) records the recipe, its hash,
and the dataset's episodes, steps, return percentiles and build time. A build is skipped when the
data file exists and the description's hash equals the current recipe's; any change to the recipe
(seed, behaviour settings, the trained policy's own recipe, ``RECIPE_VERSION``) rebuilds. The
ARS policy (of the ARS and the mixed families) is cached the same way as
``{data_dir}/policies/<env>-ars-seed<seed>.npz``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..envs import ENV_SPECS, make_env
from ..files import atomic_open
from ..provenance import content_hash, stack_versions
from .behaviours import (
    MIXED_KINDS,
    ArsConfig,
    LinearPolicy,
    MixedBehaviour,
    MixRanges,
    PDRanges,
    RandomisedPD,
    graded_noise_levels,
    train_ars,
)
from .humanoid_controller import rollout_episode
from .pickle_io import load_paths_file, save_paths

# Bump when the code that turns a recipe into data changes what it writes: every cache rebuilds.
RECIPE_VERSION = 1

SIZES: dict[str, int] = {"small": 20_000, "medium": 100_000, "large": 1_000_000}
SIZE_LABELS: dict[str, str] = {"small": "20k", "medium": "100k", "large": "1m"}

# family -> (suite env, behaviour)
FAMILIES: dict[str, tuple[str, str]] = {
    "humanoid-pd": ("humanoid", "pd"),
    "humanoid-ars": ("humanoid", "ars"),
    "hopper-ars": ("hopper", "ars"),
    "walker2d-ars": ("walker2d", "ars"),
    "halfcheetah-ars": ("halfcheetah", "ars"),
    "ant-ars": ("ant", "ars"),
    "humanoid-mixed": ("humanoid", "mixed"),
}

# How each env's ARS policy is trained: a few minutes of one CPU core (see README_suite.md).
# Hopper trains with the survival bonus shifted out (otherwise it learns to stand still for the
# bonus) and on 400-step episodes, which bounds the cost once it stays up.
_HOPPER_ARS = ArsConfig(
    iterations=60,
    directions=8,
    top=4,
    step_size=0.02,
    exploration=0.025,
    survival_shift=1.0,
    horizon=400,
)
ARS_CONFIGS: dict[str, ArsConfig] = {
    "humanoid": ArsConfig(iterations=60, directions=16, top=8, step_size=0.02, exploration=0.025),
    "hopper": _HOPPER_ARS,
    # Hopper's recipe for the other bodies. Walker2d and Ant earn a healthy bonus per step as
    # Hopper does, shifted out for the same reason; HalfCheetah has none (it never falls).
    "walker2d": _HOPPER_ARS,
    "halfcheetah": replace(_HOPPER_ARS, survival_shift=0.0),
    "ant": _HOPPER_ARS,
}
# Largest per-episode action-noise std of the ARS datasets; episodes spread evenly below it.
ARS_MAX_NOISE: dict[str, float] = {
    "humanoid": 0.3,
    "hopper": 0.5,
    # The Walker2d policy falls within ~10 steps at noise 0.2 but walks its ~210 steps at 0.1
    # (4 episodes each, probed on the trained policy): above ~0.15 the data would be mostly falls.
    "walker2d": 0.15,
    "halfcheetah": 0.5,
    "ant": 0.3,
}

_NAME = re.compile(r"^(?P<family>[a-z0-9]+-[a-z0-9]+)-(?P<steps>\d+(?:k|m)?)$")


class SuiteError(ValueError):
    """A name that is not a suite dataset, or a recipe that cannot be built."""


def suite_names(sizes: tuple[str, ...] = tuple(SIZES)) -> list[str]:
    """The standard datasets: every family at each of ``sizes`` (small, medium, large)."""
    return [f"{family}-{SIZE_LABELS[size]}" for family in FAMILIES for size in sizes]


def parse_steps(text: str) -> int:
    """``20k`` -> 20000, ``1m`` -> 1000000, ``300`` -> 300."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(text.rstrip("km")) * scale


def parse_name(name: str) -> tuple[str, str, int]:
    """``humanoid-pd-20k`` -> ``("humanoid", "pd", 20000)``; raises SuiteError otherwise."""
    m = _NAME.match(name)
    if not m or m["family"] not in FAMILIES:
        raise SuiteError(
            f"'{name}' is not a suite dataset: names are <family>-<steps> with family one of "
            f"{', '.join(FAMILIES)} and steps like 20k, 100k, 1m or 300"
        )
    steps = parse_steps(m["steps"])
    if steps < 1:
        raise SuiteError(f"'{name}': the step count must be at least 1")
    env, behaviour = FAMILIES[m["family"]]
    return env, behaviour, steps


def is_suite_name(name: str) -> bool:
    try:
        parse_name(name)
    except SuiteError:
        return False
    return True


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PolicyRecipe:
    """What an ARS policy file is made from."""

    env: str
    ars: ArsConfig
    version: int = RECIPE_VERSION

    def digest(self) -> str:
        return _hash(asdict(self))


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a suite dataset's content; its hash keys the cache."""

    name: str
    env: str
    behaviour: str
    steps: int
    seed: int = 0
    pd: PDRanges | None = None
    max_noise: float | None = None
    policy: PolicyRecipe | None = None
    version: int = RECIPE_VERSION
    mix: MixRanges | None = None

    def digest(self) -> str:
        record = asdict(self)
        record.pop("name")  # the same data under another name is the same recipe
        if record["mix"] is None:
            # The families made before mixtures keep their hashes, so their caches stay valid.
            record.pop("mix")
        return _hash(record)


def recipe_for(name: str, seed: int = 0) -> Recipe:
    """The recipe a suite name stands for (``seed`` changes which episodes are drawn)."""
    env, behaviour, steps = parse_name(name)
    if behaviour == "pd":
        return Recipe(name, env, behaviour, steps, seed, pd=PDRanges())
    if behaviour == "mixed":
        return Recipe(
            name,
            env,
            behaviour,
            steps,
            seed,
            pd=PDRanges(),
            policy=PolicyRecipe(env, ARS_CONFIGS[env]),
            mix=MixRanges(),
        )
    return Recipe(
        name,
        env,
        behaviour,
        steps,
        seed,
        max_noise=ARS_MAX_NOISE[env],
        policy=PolicyRecipe(env, ARS_CONFIGS[env]),
    )


def data_file(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}-v2.pkl"


def description_file(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}-v2.json"


def policy_file(data_dir: str | Path, recipe: PolicyRecipe) -> Path:
    return Path(data_dir) / "policies" / f"{recipe.env}-ars-seed{recipe.ars.seed}.npz"


def read_description(data_dir: str | Path, name: str) -> dict[str, Any] | None:
    path = description_file(data_dir, name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_cached(data_dir: str | Path, recipe: Recipe) -> bool:
    """True when the data file exists and its description records this very recipe."""
    described = read_description(data_dir, recipe.name)
    return (
        data_file(data_dir, recipe.name).is_file()
        and described is not None
        and described.get("recipe_hash") == recipe.digest()
    )


def _write_json(path: Path, record: dict[str, Any]) -> None:
    with atomic_open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def ensure_policy(
    data_dir: str | Path, recipe: PolicyRecipe, log: Callable[[str], None] = print
) -> tuple[LinearPolicy, dict[str, np.ndarray]]:
    """The ARS policy ``recipe`` describes: read from its cached file, or trained and saved."""
    path = policy_file(data_dir, recipe)
    if path.is_file():
        policy, meta = LinearPolicy.load(path)
        if str(meta.get("recipe_hash")) == recipe.digest():
            return policy, meta
        log(f"{path} was trained by another recipe; retraining")
    env = make_env(recipe.env)
    log(f"training the {recipe.env} ARS policy ({recipe.ars.iterations} iterations) -> {path}")
    policy, curve = train_ars(env, recipe.ars, log=log)
    env.close()
    meta = {"recipe_hash": recipe.digest(), "recipe": json.dumps(asdict(recipe)), **curve}
    policy.save(path, **meta)
    return LinearPolicy.load(path)


def episode_kinds(recipe: Recipe, n_episodes: int) -> list[str]:
    """Which behaviour played each of a mixed dataset's first ``n_episodes`` episodes (each
    episode's first draw, so no rollout is needed to tell)."""
    if recipe.mix is None:
        raise SuiteError(f"{recipe.name} is not a mixture of behaviours")
    return [
        recipe.mix.draw_kind(np.random.default_rng([recipe.seed, i])) for i in range(n_episodes)
    ]


def describe_by_kind(paths: list[dict[str, np.ndarray]], kinds: list[str]) -> dict[str, Any]:
    """Per behaviour of a mixture: episodes, steps, median length and return percentiles."""
    out = {}
    for kind in MIXED_KINDS:
        mine = [p for p, k in zip(paths, kinds, strict=True) if k == kind]
        if not mine:
            continue
        returns = np.array([float(p["rewards"].sum()) for p in mine])
        out[kind] = {
            "episodes": len(mine),
            "steps": int(sum(len(p["rewards"]) for p in mine)),
            "median_length": float(np.median([len(p["rewards"]) for p in mine])),
            "returns": {f"p{q}": float(np.percentile(returns, q)) for q in (10, 50, 90)},
        }
    return out


def describe(paths: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Episodes, steps, episode lengths and return percentiles of a list of trajectories."""
    returns = np.array([float(p["rewards"].sum()) for p in paths])
    lengths = np.array([len(p["rewards"]) for p in paths])
    pct = {f"p{q}": float(np.percentile(returns, q)) for q in (10, 50, 90)}
    return {
        "episodes": len(paths),
        "steps": int(lengths.sum()),
        "length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "max": int(lengths.max()),
        },
        "returns": {
            "min": float(returns.min()),
            **pct,
            "max": float(returns.max()),
            "mean": float(returns.mean()),
        },
    }


def rollout(
    recipe: Recipe,
    policy: LinearPolicy | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Roll the recipe's behaviour out until ``recipe.steps`` steps are stored."""
    env = make_env(recipe.env)
    if recipe.behaviour != "pd" and policy is None:
        raise SuiteError(f"{recipe.name}: the {recipe.behaviour} behaviour needs its ARS policy")
    if recipe.behaviour == "pd":
        pd = RandomisedPD(env, recipe.pd)
    elif recipe.behaviour == "mixed":
        mixed = MixedBehaviour(env, recipe.mix, recipe.pd, policy)
    paths: list[dict[str, np.ndarray]] = []
    stored = 0
    while stored < recipe.steps:
        i = len(paths)
        rng = np.random.default_rng([recipe.seed, i])
        offset = None
        if recipe.behaviour == "pd":
            act, noise = pd.draw(rng), 0.0
        elif recipe.behaviour == "mixed":
            plan = mixed.draw(rng)
            act, noise, offset = plan.act, plan.noise, plan.offset
        else:
            act = policy
            noise = float(graded_noise_levels(i + 1, recipe.max_noise)[i])
        paths.append(rollout_episode(env, act, noise, rng, recipe.seed + i, offset))
        stored += len(paths[-1]["rewards"])
        if log is not None and len(paths) % 200 == 0:
            log(f"{recipe.name}: {len(paths)} episodes, {stored}/{recipe.steps} steps")
    env.close()
    return paths


def build(
    recipe: Recipe,
    data_dir: str | Path,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], bool]:
    """Make the dataset unless it is cached; returns its description and whether it was built."""
    if recipe.env not in ENV_SPECS:
        raise SuiteError(f"{recipe.name}: unknown env '{recipe.env}'")
    if not force and is_cached(data_dir, recipe):
        return read_description(data_dir, recipe.name), False
    policy, policy_meta = None, None
    if recipe.policy is not None:
        policy, policy_meta = ensure_policy(data_dir, recipe.policy, log)
    start = time.perf_counter()
    paths = rollout(recipe, policy, log)
    # Data first, description second: a crash between leaves no matching hash, so it rebuilds.
    save_paths(paths, data_file(data_dir, recipe.name))
    record = {
        "name": recipe.name,
        "file": data_file(data_dir, recipe.name).name,
        "train_with": f"--env {recipe.env} --dataset {recipe.name[len(recipe.env) + 1 :]}",
        **describe(paths),
        **(
            {"behaviours": describe_by_kind(paths, episode_kinds(recipe, len(paths)))}
            if recipe.mix is not None
            else {}
        ),
        "build_seconds": round(time.perf_counter() - start, 1),
        "content_hash": content_hash(paths),
        "recipe_hash": recipe.digest(),
        "recipe": asdict(recipe),
        # The same recipe gives other data on another mujoco or CPU: what made this one.
        "versions": stack_versions(),
    }
    if policy_meta is not None:
        record["policy"] = {
            "file": str(policy_file(data_dir, recipe.policy).name),
            "train_seconds": round(float(policy_meta["train_seconds"]), 1),
            "train_env_steps": int(policy_meta["env_steps"]),
            "final_return": float(policy_meta["policy_returns"][-1]),
        }
    _write_json(description_file(data_dir, recipe.name), record)
    return record, True


def load_suite_dataset(data_dir: str | Path, name: str) -> list[dict[str, np.ndarray]]:
    """The trajectories of a built suite dataset (through the restricted unpickler)."""
    return load_paths_file(data_file(data_dir, name))
