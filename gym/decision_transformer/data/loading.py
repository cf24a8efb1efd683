"""Find and load the dataset a run names: a project-format pickle or a Minari dataset id."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError, one_line
from .dataset_files import dataset_file, how_to_make
from .pickle_io import UnsafePickleError, load_paths_file
from .trajectories import TrajectoryDataset

MINARI_PREFIX = "minari:"


def check_dataset_available(data_dir: str | Path, env: str, dataset: str) -> None:
    """Fail fast, before anything slow, when the dataset file is missing."""
    if dataset.startswith(MINARI_PREFIX):
        return  # resolved (and if need be downloaded) by minari at load time
    path = dataset_file(data_dir, env, dataset)
    if not path.is_file():
        offline = ""
        if env == "humanoid" and dataset != "collected":
            # The download needs the network; the embedded dataset is made locally in ~40 s.
            offline = (
                f"; or, with no network, train on --dataset collected after "
                f"`{how_to_make(env, 'collected', data_dir)}`"
            )
        raise DatasetError(
            f"dataset file {path} not found: make it with `{how_to_make(env, dataset, data_dir)}` "
            f"(run from gym/), or point --data_dir at the folder that holds it{offline}"
        )


def load_dataset(
    data_dir: str | Path, env: str, dataset: str, mode: str = "normal"
) -> TrajectoryDataset:
    if dataset.startswith(MINARI_PREFIX):
        from . import minari_io  # minari is only needed on this path

        dataset_id = dataset[len(MINARI_PREFIX) :]
        loaded = minari_io.load_minari_dataset(dataset_id)
        try:
            paths = minari_io.paths_from_minari(loaded)
        except ValueError as e:
            raise DatasetError(
                f"--dataset {dataset}: {one_line(e)}; pick another dataset"
            ) from None
        return TrajectoryDataset.from_paths(paths, mode=mode, source=f"Minari dataset {dataset_id}")
    check_dataset_available(data_dir, env, dataset)
    path = dataset_file(data_dir, env, dataset)
    remake = f"delete it and remake it with `{how_to_make(env, dataset, data_dir)}`"
    try:
        paths = load_paths_file(path)
    except UnsafePickleError as e:
        raise DatasetError(f"{path}: {e}; {remake}") from None
    except Exception as e:  # a torn or foreign file fails in many ways inside the unpickler
        raise DatasetError(
            f"{path} is not a readable trajectory file "
            f"({one_line(str(e).replace(f'{path}: ', ''), 160)}); {remake}"
        ) from None
    return TrajectoryDataset.from_paths(paths, mode=mode, source=str(path))
