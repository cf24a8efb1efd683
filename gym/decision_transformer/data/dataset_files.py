"""Where a named dataset's file lives and the command that makes it.

Its own module because both loaders need it: ``loading`` names the command in its "file not
found" errors, ``minari_io`` names it as the offline alternative to a failed download.
"""

from __future__ import annotations

from pathlib import Path


def dataset_file(data_dir: str | Path, env: str, dataset: str) -> Path:
    return Path(data_dir) / f"{env}-{dataset}-v2.pkl"


def how_to_make(env: str | None, dataset: str = "collected", data_dir: str | Path = "data") -> str:
    """The command (run from gym/) that writes ``{data_dir}/{env}-{dataset}-v2.pkl``."""
    if dataset != "collected":
        return (
            f"python data/download_d4rl_datasets.py --env {env} --datasets {dataset} "
            f"--out {data_dir}"
        )
    if env in (None, "humanoid"):
        return f"python data/collect_dataset.py --env humanoid --out {data_dir}"
    # Only humanoid has a built-in controller; other envs need a trained policy to roll out.
    return f"python data/collect_dataset.py --env {env} --policy MODEL.zip --out {data_dir}"
