"""The two calls push_to_hub.py makes to the Hugging Face Hub (HfApi.create_repo and
HfApi.upload_folder), recorded in this process instead of sent: the Hub cannot be reached from
the tests. Everything else, the user's token included, goes through huggingface_hub as is."""

from __future__ import annotations

from pathlib import Path

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
