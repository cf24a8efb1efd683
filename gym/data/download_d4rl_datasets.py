"""Fetch offline datasets and convert them to ``{out}/{env}-{dataset}-v2.pkl``.

    python gym/data/download_d4rl_datasets.py --env humanoid --out gym/data   (from the repo root)
    python data/download_d4rl_datasets.py --env all                           (from gym/)

humanoid: Minari's ``mujoco/humanoid/{simple,medium,expert}-v0`` (Humanoid-v5).
hopper, halfcheetah, walker2d, ant: the original paper's medium, medium-replay, expert and
medium-expert. With legacy ``gym`` + ``d4rl`` importable they come from D4RL itself; otherwise
from Minari's ``mujoco/<env>/{medium,expert}-v0`` (v5 environments, the suite's), where
medium-expert is medium followed by expert and medium-replay has no counterpart.

A dataset already in the local Minari store (``MINARI_DATASETS_PATH``) is used as is. One that
can be had neither way gets one line naming it and the offline alternative; the rest still
convert. When nothing was converted (or already there) the exit code is 2, after one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# Work from the repo root and from gym/ alike: the package lives next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decision_transformer.data.minari_io import (  # noqa: E402
    DatasetUnavailableError,
    load_minari_dataset,
    minari_dataset_ids,
    offline_alternative,
    paths_from_minari,
    unavailable_message,
)
from decision_transformer.data.pickle_io import save_paths  # noqa: E402
from decision_transformer.errors import UserError, one_line  # noqa: E402
from decision_transformer.run.cli import HelpFormatter, OneLineParser, report  # noqa: E402
from decision_transformer.run.paths import check_output_dir  # noqa: E402

D4RL_ENVS = ("hopper", "halfcheetah", "walker2d", "ant")
DEFAULT_DATASETS: dict[str, tuple[str, ...]] = {
    "humanoid": ("simple", "medium", "expert"),
    **{env: ("medium", "medium-replay", "expert", "medium-expert") for env in D4RL_ENVS},
}
ALL_ENVS = tuple(DEFAULT_DATASETS)


def legacy_d4rl_importable() -> bool:
    try:
        import d4rl  # noqa: F401

        import gym  # noqa: F401
    except Exception:  # d4rl drags in mujoco_py, which fails in many ways besides ImportError
        return False
    return True


def paths_from_d4rl(env: str, dataset: str) -> list[dict[str, np.ndarray]]:
    """Split a legacy D4RL dataset into episodes at its terminal and timeout flags."""
    import d4rl  # noqa: F401  (registers the D4RL environments with gym)

    import gym

    data = gym.make(f"{env}-{dataset}-v2").get_dataset()
    observations = data["observations"]
    next_observations = data.get("next_observations")
    if next_observations is None:  # old files: the next row is the next observation
        next_observations = np.concatenate([observations[1:], observations[-1:]])
    terminals = data["terminals"].astype(bool)
    timeouts = data["timeouts"].astype(bool)
    ends = np.flatnonzero(terminals | timeouts)
    paths, start = [], 0
    for end in ends:
        rows = slice(start, end + 1)
        paths.append(
            {
                "observations": observations[rows].astype(np.float32),
                "next_observations": next_observations[rows].astype(np.float32),
                "actions": data["actions"][rows].astype(np.float32),
                "rewards": data["rewards"][rows].astype(np.float32),
                "terminals": terminals[rows],
                "timeouts": timeouts[rows],
            }
        )
        start = end + 1
    return paths


class Converter:
    """Converts datasets one by one, remembering Minari loads (medium-expert reuses medium and
    expert) and whether the network is down (then nothing more is worth downloading)."""

    def __init__(self, out: Path, overwrite: bool, use_d4rl: bool):
        self.out = out
        self.overwrite = overwrite
        self.use_d4rl = use_d4rl
        self.network_down = False
        self.failures: list[str] = []  # one line per dataset that could not be had
        self._minari_paths: dict[str, list[dict[str, np.ndarray]]] = {}

    def _minari_paths_for(self, dataset_id: str) -> list[dict[str, np.ndarray]]:
        if dataset_id not in self._minari_paths:
            try:
                dataset = load_minari_dataset(dataset_id, download=not self.network_down)
            except DatasetUnavailableError as err:
                if self.network_down:  # not even tried: say why, not just "downloading is off"
                    reason = "could not be downloaded (no network)"
                    raise DatasetUnavailableError(
                        unavailable_message(dataset_id, reason), offline=True
                    ) from None
                self.network_down = err.offline
                raise
            self._minari_paths[dataset_id] = paths_from_minari(dataset)
        return self._minari_paths[dataset_id]

    def _paths(self, env: str, dataset: str) -> list[dict[str, np.ndarray]]:
        if env in D4RL_ENVS and self.use_d4rl:
            return paths_from_d4rl(env, dataset)
        ids = minari_dataset_ids(env, dataset)
        if ids is None:
            if env in D4RL_ENVS:
                why = "only D4RL has it, and legacy gym + d4rl are not importable"
            else:
                why = f"Minari hosts no '{dataset}' dataset for {env}"
            raise DatasetUnavailableError(f"{why}; offline alternative: {offline_alternative(env)}")
        paths: list[dict[str, np.ndarray]] = []
        for dataset_id in ids:
            paths += self._minari_paths_for(dataset_id)
        return paths

    def convert(self, env: str, dataset: str) -> bool:
        """Write ``{env}-{dataset}-v2.pkl``; True if it exists afterwards."""
        target = self.out / f"{env}-{dataset}-v2.pkl"
        if target.exists() and not self.overwrite:
            print(f"{target} already exists, keeping it")
            return True
        try:
            paths = self._paths(env, dataset)
        except DatasetUnavailableError as err:
            self.failures.append(f"{env}-{dataset}: {one_line(err)}")
            return False
        save_paths(paths, target)
        returns = np.array([p["rewards"].sum() for p in paths])
        steps = sum(len(p["rewards"]) for p in paths)
        print(
            f"wrote {target}: {len(paths)} episodes, {steps} steps, "
            f"return mean {returns.mean():.1f} max {returns.max():.1f}"
        )
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument(
        "--env",
        nargs="+",
        default=["all"],
        help=f"one or more of {', '.join(ALL_ENVS)}, or all (the default)",
    )
    parser.add_argument(
        "--datasets", nargs="+", default=None, help="subset, e.g. medium expert (default: all)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent), help="folder for the .pkl files"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files already there")
    args = parser.parse_args(argv)
    envs = ALL_ENVS if "all" in args.env else tuple(dict.fromkeys(args.env))
    unknown = [env for env in envs if env not in DEFAULT_DATASETS]
    if unknown:
        parser.error(f"no datasets for {', '.join(unknown)}: choose from {', '.join(ALL_ENVS)}")
    args.env = envs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = check_output_dir(args.out, "--out")
    except UserError as e:
        return report(e)
    converter = Converter(out, args.overwrite, use_d4rl=legacy_d4rl_importable())
    had = 0
    for env in args.env:
        for dataset in args.datasets or DEFAULT_DATASETS[env]:
            had += converter.convert(env, dataset)
    if had == 0:
        # Nothing to show for the run: one line naming every dataset and why.
        print(
            f"error: no dataset could be converted: {' | '.join(converter.failures)}",
            file=sys.stderr,
        )
        return 2
    for failure in converter.failures:
        print(f"unavailable {failure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
