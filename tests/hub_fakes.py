"""The Hugging Face Hub without a network, for the tests. Download: a folder laid out as
huggingface_hub's own cache of a repo id (:func:`hub_cache`), which its real snapshot_download
then reads with HF_HUB_OFFLINE=1. Upload: the two calls push_to_hub.py makes (HfApi.create_repo
and HfApi.upload_folder) recorded in this process instead of sent (:func:`record_hub_calls`);
everything else, the user's token included, goes through huggingface_hub as is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "4f0c1e2d3b4a59687766554433221100ffeeddcc"  # any 40 hex digits name a commit
COMMIT_URL = "https://hub.invalid/commit/1"


class HubRecorder:
    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def method(self, name: str, result=None):
        def record(api, *args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result

        return record

    def sent(self) -> tuple[dict, list[str]]:
        """The recorded upload_folder call's arguments and the files that call would send:
        huggingface_hub's own filter (with its default ignore patterns) over the folder."""
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
        from huggingface_hub.utils import filter_repo_objects

        (kwargs,) = [kw for name, _, kw in self.calls if name == "upload_folder"]
        folder = Path(kwargs["folder_path"])
        listing = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        files = filter_repo_objects(listing, allow_patterns=kwargs.get("allow_patterns"),
                                    ignore_patterns=DEFAULT_IGNORE_PATTERNS)  # fmt: skip
        return kwargs, sorted(files)


def record_hub_calls(monkeypatch) -> HubRecorder:
    import huggingface_hub

    rec = HubRecorder()
    commit = type("CommitInfo", (), {"commit_url": COMMIT_URL})()
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", rec.method("create_repo"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", rec.method("upload_folder", commit))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return rec


def hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """``folder``'s files as huggingface_hub caches a download of ``repo_id`` at ``commit``:
    models--OWNER--NAME/blobs/<sha256>, snapshots/<commit>/<file> (a relative symlink to its
    blob) and refs/main holding the commit. Returns the snapshot folder."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / "main").write_text(commit)
    return snapshot
