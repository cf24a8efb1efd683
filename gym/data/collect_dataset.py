"""Make an offline dataset from the real simulator, with no download.

    python data/collect_dataset.py --env humanoid --out data            (from gym/)
    python gym/data/collect_dataset.py --env humanoid --out gym/data    (from the repo root)

writes ``{out}/humanoid-collected-v2.pkl`` in the project's trajectory format: 1000 episodes
(~100k steps) of the built-in balance controller with graded action noise and knee bending (see
``decision_transformer/data/humanoid_controller.py`` for how and why), in about 40 seconds.
1000 rather than the 50 the task needs at least: on 150 episodes (~24k steps) a small Decision
Transformer came to fit the training actions far more closely than the noise-free controller does
(its loss fell well below the noise's variance), i.e. it learned each episode's noise instead of
the behaviour; on 1000 it does not.

``--policy PATH`` rolls out a Stable-Baselines3 policy instead (any env of the suite; needs the
optional ``stable_baselines3`` package, or ``sb3_contrib`` for its algorithms), with the same
graded noise (and, on humanoid, knee bending). ``--minari_id ID`` also stores the rollouts as a
local Minari dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Work from the repo root and from gym/ alike: the package lives next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decision_transformer.data.humanoid_controller import (  # noqa: E402
    DEFAULT_MAX_KNEE_BEND,
    DEFAULT_MAX_NOISE,
    BalanceController,
    knee_bend_offset,
    knee_bends,
    noise_levels,
    rollout_episode,
)
from decision_transformer.data.pickle_io import save_paths  # noqa: E402
from decision_transformer.envs import ENV_SPECS, make_env  # noqa: E402
from decision_transformer.errors import UserError  # noqa: E402
from decision_transformer.files import atomic_open  # noqa: E402
from decision_transformer.provenance import (  # noqa: E402
    dataset_fingerprint,
    describe_fingerprint,
    describe_versions,
    stack_versions,
)
from decision_transformer.run.cli import HelpFormatter, OneLineParser, run_cli  # noqa: E402
from decision_transformer.run.paths import check_output_dir  # noqa: E402

DATASET_NAME = "collected"
DEFAULT_EPISODES = 1000


class CollectError(UserError, RuntimeError):
    """A problem with the request itself, reported as one line without a traceback."""


def load_sb3_policy(path: str, algo: str) -> Callable[[np.ndarray], np.ndarray]:
    """Deterministic action function of a saved Stable-Baselines3 model."""
    modules = []
    for name in ("stable_baselines3", "sb3_contrib"):
        try:
            modules.append(__import__(name))
        except ImportError:
            pass
    if not modules:
        raise CollectError(
            "--policy needs Stable-Baselines3, which is not installed "
            "(pip install stable-baselines3; sb3-contrib for TQC and friends)"
        )
    for module in modules:
        cls = getattr(module, algo, None)
        if cls is not None:
            break
    else:
        searched = ", ".join(m.__name__ for m in modules)
        raise CollectError(f"no algorithm class '{algo}' in {searched}")
    if not Path(path).is_file():
        raise CollectError(f"policy file not found: {path}")
    model = cls.load(path, device="cpu")

    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(obs, deterministic=True)
        return np.asarray(action, dtype=np.float64)

    return act


def check_minari_id(dataset_id: str, overwrite: bool) -> None:
    """Refuse (or with --overwrite, clear) an id already in the local Minari store, before any
    rollout: Minari will not write over a dataset."""
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        parse_dataset_id(dataset_id)
    except Exception as err:
        raise CollectError(f"bad --minari_id '{dataset_id}': {err}") from None
    if get_dataset_path(dataset_id).exists():
        if not overwrite:
            raise CollectError(
                f"Minari dataset {dataset_id} already exists in {get_dataset_path()} "
                "(pass --overwrite to replace it)"
            )
        minari.delete_dataset(dataset_id)


def write_minari(dataset_id: str, env_id: str, paths: list[dict[str, np.ndarray]]) -> None:
    """Store the rollouts as a local Minari dataset (under MINARI_DATASETS_PATH), no network."""
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, path in enumerate(paths):
        # Minari keeps T+1 observations per episode: the last next-observation closes it.
        observations = np.concatenate([path["observations"], path["next_observations"][-1:]])
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=observations,
                actions=path["actions"],
                rewards=path["rewards"].tolist(),
                terminations=path["terminals"].tolist(),
                truncations=path["timeouts"].tolist(),
            )
        )
    with warnings.catch_warnings():
        # Minari nags about unset author, e-mail and code link; none applies to a local dataset.
        warnings.simplefilter("ignore", UserWarning)
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env_id,
            eval_env=env_id,
            algorithm_name="a fixed policy with graded action noise (and knee bending on humanoid)",
            description="Made by gym/data/collect_dataset.py from the simulator, no download.",
        )


def description_path(out: Path) -> Path:
    """The JSON beside a made dataset: ``humanoid-collected-v2.pkl`` -> ``...-v2.json``."""
    return out.with_suffix(".json")


def write_description(out: Path, args: argparse.Namespace, fingerprint: dict) -> dict:
    """What made ``out`` and what it holds: the command's settings, the fingerprint and the
    versions and machine behind it (the same seed gives other data on another mujoco or CPU)."""
    record = {
        "file": out.name,
        "made_by": "gym/data/collect_dataset.py",
        "settings": {k: getattr(args, k) for k in ("env", "episodes", "seed", "noise", "knee_bend")}
        | {"policy": args.policy},
        "fingerprint": fingerprint,
        "versions": stack_versions(),
    }
    with atomic_open(description_path(out), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return record


def collect(args: argparse.Namespace) -> int:
    if args.env not in ENV_SPECS:
        raise CollectError(f"unknown env '{args.env}': known envs are {', '.join(ENV_SPECS)}")
    if args.policy is None and args.env != "humanoid":
        raise CollectError(
            f"the built-in controller is for humanoid only; for {args.env} pass --policy PATH "
            "(a Stable-Baselines3 model) or use data/download_d4rl_datasets.py"
        )
    if args.episodes < 1:
        raise CollectError("--episodes must be at least 1")
    if args.seed < 0:
        raise CollectError(f"--seed must be >= 0, got {args.seed}")
    for flag in ("noise", "knee_bend"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value < float("inf"):
            raise CollectError(f"--{flag} must be a number >= 0, got {value}")
    check_output_dir(args.out, "--out")
    if args.knee_bend is None:
        args.knee_bend = DEFAULT_MAX_KNEE_BEND if args.env == "humanoid" else 0.0
    elif args.knee_bend and args.env != "humanoid":
        raise CollectError(f"--knee_bend is for humanoid only; drop it for {args.env}")
    out = Path(args.out) / f"{args.env}-{DATASET_NAME}-v2.pkl"
    if out.exists() and not args.overwrite:
        print(f"{out} already exists, skipping (pass --overwrite to remake it)")
        return 0

    if args.minari_id:
        check_minari_id(args.minari_id, args.overwrite)

    start = time.perf_counter()
    policy = load_sb3_policy(args.policy, args.policy_algo) if args.policy else BalanceController()
    env = make_env(args.env)
    levels = noise_levels(args.episodes, args.noise)
    bends = knee_bends(args.episodes, args.knee_bend)
    knees = knee_bend_offset(env, 1.0) if args.knee_bend else None
    paths = []
    for i, (level, bend) in enumerate(zip(levels, bends)):
        rng = np.random.default_rng([args.seed, i])
        offset = None if knees is None else bend * knees
        paths.append(rollout_episode(env, policy, float(level), rng, args.seed + i, offset))
    env.close()
    # Data first, description second: a description always speaks of the file beside it.
    save_paths(paths, out)
    record = write_description(out, args, dataset_fingerprint(paths))
    seconds = time.perf_counter() - start
    print(f"wrote {out} in {seconds:.1f} s: {describe_fingerprint(record['fingerprint'])}")
    print(f"made with {describe_versions(record['versions'])} ({description_path(out).name})")
    if args.minari_id:
        write_minari(args.minari_id, ENV_SPECS[args.env].gym_id, paths)
        print(f"wrote local Minari dataset {args.minari_id}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--env", default="humanoid", help="suite env name")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent), help="folder for the .pkl file"
    )
    parser.add_argument(
        "--episodes", type=int, default=DEFAULT_EPISODES, help="episodes to roll out"
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=DEFAULT_MAX_NOISE,
        help="largest per-episode action-noise std; episodes rise evenly from 35%% of it",
    )
    parser.add_argument(
        "--knee_bend",
        type=float,
        default=None,
        help="largest per-episode knee-bending action offset, rising evenly from 0 alongside the "
        f"noise (humanoid only; unset means {DEFAULT_MAX_KNEE_BEND} there)",
    )
    parser.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    parser.add_argument(
        "--policy",
        default=None,
        help="Stable-Baselines3 model .zip to roll out (default: the built-in humanoid "
        "controller). WARNING: loading an SB3 zip unpickles its contents, which can run "
        "arbitrary code: pass only files you trust",
    )
    parser.add_argument("--policy_algo", default="PPO", help="its algorithm class, e.g. SAC, TQC")
    parser.add_argument(
        "--minari_id", default=None, help="also write a local Minari dataset (default: none)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(collect, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
