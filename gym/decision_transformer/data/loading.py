"""Find and load the dataset a run names: a project-format pickle or a Minari dataset id."""

from __future__ import annotations

from pathlib import Path

from .pickle_io import load_paths_file
from .trajectories import DatasetError, TrajectoryDataset

MINARI_PREFIX = "minari:"


def dataset_file(data_dir: str | Path, env: str, dataset: str) -> Path:
    return Path(data_dir) / f"{env}-{dataset}-v2.pkl"


def how_to_make(env: str, dataset: str, data_dir: str | Path) -> str:
    if dataset == "collected":
        return f"python data/collect_dataset.py --env {env} --out {data_dir}"
    return (
        f"python data/download_d4rl_datasets.py --env {env} --datasets {dataset} --out {data_dir}"
    )


def check_dataset_available(data_dir: str | Path, env: str, dataset: str) -> None:
    """Fail fast, before anything slow, when the dataset file is missing."""
    if dataset.startswith(MINARI_PREFIX):
        return  # resolved (and if need be downloaded) by minari at load time
    path = dataset_file(data_dir, env, dataset)
    if not path.is_file():
        raise DatasetError(
            f"dataset file {path} not found: make it with `{how_to_make(env, dataset, data_dir)}` "
            "(run from gym/), or point --data_dir at the folder that holds it"
        )


def load_dataset(
    data_dir: str | Path, env: str, dataset: str, mode: str = "normal"
) -> TrajectoryDataset:
    if dataset.startswith(MINARI_PREFIX):
        from . import minari_io  # minari is only needed on this path

        dataset_id = dataset[len(MINARI_PREFIX) :]
        paths = minari_io.paths_from_minari(minari_io.load_minari_dataset(dataset_id))
        return TrajectoryDataset.from_paths(paths, mode=mode, source=f"Minari dataset {dataset_id}")
    check_dataset_available(data_dir, env, dataset)
    path = dataset_file(data_dir, env, dataset)
    return TrajectoryDataset.from_paths(load_paths_file(path), mode=mode, source=str(path))
