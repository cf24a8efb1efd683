"""push_to_hub.py: upload a model folder to the Hugging Face Hub with huggingface_hub.

The token is the user's usual login (``hf auth login``, or ``HF_TOKEN``), read by huggingface_hub
and passed to nothing else: this code never writes it anywhere. The folder is only read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UserError, one_line
from ..models.pretrained import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    MULTITASK_DT,
    WEIGHTS_NAME,
    MultiTaskFolderConfig,
    read_config,
    read_config_json,
)
from .cli import HelpFormatter, OneLineParser, run_cli


class HubError(UserError, RuntimeError):
    """The upload cannot be made; the message names the fix."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        formatter_class=HelpFormatter,
        description="Upload a model folder export.py wrote to a Hugging Face Hub model repo "
        "(created if missing), with your Hugging Face login's token.",
    )
    p.add_argument("folder", help="the model folder (config.json, model.safetensors, README.md)")
    p.add_argument("repo_id", help="the Hub repo, owner/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to push to (default: main)")
    p.add_argument("--message", default=None, help="commit message")
    return p


def push(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         message: str | None = None) -> str:  # fmt: skip
    """Upload the folder's three files; returns the commit's URL."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"no folder at {folder}: give a model folder export.py wrote")
    what = describe_folder(folder)  # refuses anything that is not a model folder
    for name in (WEIGHTS_NAME, CARD_NAME):
        if not (folder / name).is_file():
            raise HubError(f"{folder} has no {name}: re-export it with export.py")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise HubError("HF_HUB_OFFLINE is set: unset it to upload (the folder is unchanged)")
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise HubError(
            "not logged in to the Hugging Face Hub: run `hf auth login` (or set HF_TOKEN), "
            "then push again"
        )
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            revision=revision,
            commit_message=message or f"Upload {what}",
        )
    except Exception as e:  # offline, refused token, bad id: one line, the folder untouched
        raise HubError(
            f"upload to {repo_id} failed ({one_line(e, 160)}); check your network, login and "
            "the repo id (the folder is unchanged)"
        ) from None
    return str(getattr(info, "commit_url", info))


def describe_folder(folder: Path) -> str:
    """'ARCHITECTURE for ENV' of a model folder, its config checked: the gym half's in full (it
    must load); an Atari DT's (atari/export_atari.py, whose loader lives with the Atari code) for
    its format version and game (a multi-game one's: its games)."""
    raw, path = read_config_json(folder)
    if isinstance(raw, dict) and raw.get("architecture") == "atari_dt":
        version, acting = raw.get("format_version"), raw.get("acting")
        acting = acting if isinstance(acting, dict) else {}
        games = acting.get("games") if isinstance(acting.get("games"), list) else []
        game = acting.get("game") or ", ".join(
            str(g.get("game")) for g in games if isinstance(g, dict)
        )
        if raw.get("format") != FORMAT_NAME or not isinstance(version, int) or not game:
            raise HubError(f"{path} is not an Atari model folder export_atari.py wrote")
        if version > FORMAT_VERSION:
            raise HubError(f"{path} has format version {version}, newer than this code reads")
        return f"atari_dt for {game}"
    if isinstance(raw, dict) and raw.get("architecture") == MULTITASK_DT:
        multi = MultiTaskFolderConfig.from_dict(raw, str(path))
        return f"{MULTITASK_DT} for {', '.join(t.acting.gym_id for t in multi.tasks)}"
    cfg = read_config(folder)
    return f"{cfg.architecture} for {cfg.acting.gym_id}"


def main(argv: list[str] | None = None) -> int:
    """push_to_hub.py; a user error is one line on stderr and exit code 2."""
    return run_cli(_main, build_parser().parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    url = push(args.folder, args.repo_id, args.private, args.revision, args.message)
    print(f"uploaded {args.folder} to {args.repo_id}: {url}")
    return 0
