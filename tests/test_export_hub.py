"""A model folder through the Hugging Face Hub's paths, with no network.

Download: the folder is laid out as huggingface_hub's own cache of a repo id (blobs, a snapshot
of symlinks at a commit, refs/main), which huggingface_hub's scan_cache_dir accepts; with
HF_HUB_OFFLINE=1 the repo id then resolves through huggingface_hub's real snapshot_download, in
from_pretrained, evaluate.py and --init_from (offline and online fine-tuning).

Upload: the Hub cannot be reached, so push_to_hub.py runs with HfApi.create_repo and
HfApi.upload_folder replaced in this process by recorders; what the real upload would send is
computed by huggingface_hub's own pattern filter on the recorded arguments. That is the only
faked part.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import GYM_DIR, TINY, run_main, script_env
from decision_transformer.models.pretrained import PretrainedError, from_pretrained
from decision_transformer.run import experiment, hub
from hub_fakes import COMMIT, COMMIT_URL, hub_cache, record_hub_calls
from rollouts import write_dataset

huggingface_hub = pytest.importorskip("huggingface_hub")

REPO_ID = "someone/dt-hopper"
STOCHASTIC = ["--policy", "stochastic"]  # what online fine-tuning needs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "hopper", "medium", episodes=6, max_steps=40)
    return d


@pytest.fixture(scope="module")
def shared(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run's exported model folder, and a Hub cache holding it as REPO_ID."""
    run = tmp_path_factory.mktemp("runs") / "hopper"
    argv = ["--env", "hopper", "--data_dir", data_dir, "--out_dir", run, *TINY, *STOCHASTIC]
    proc = run_main(experiment.main, *argv)
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path_factory.mktemp("hf") / "hub"
    hub_cache(cache, REPO_ID, run / "model")
    return run / "model", cache


def offline_env(cache: Path) -> dict:
    return {**script_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}


def run_offline(cache: Path, script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=GYM_DIR,
                          env=offline_env(cache), capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_the_cache_is_one_huggingface_hub_reads(shared):
    folder, cache = shared
    info = huggingface_hub.scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO_ID and repo.repo_type == "model"
    (rev,) = repo.revisions
    assert rev.commit_hash == COMMIT and rev.refs == frozenset({"main"})
    assert sorted(f.file_name for f in rev.files) == sorted(p.name for p in folder.iterdir())


def test_from_pretrained_resolves_a_repo_id_through_the_cache(shared, monkeypatch):
    folder, cache = shared
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = from_pretrained(REPO_ID)
    local = from_pretrained(folder)
    assert model.pretrained_config.to_dict() == local.pretrained_config.to_dict()
    ours, theirs = model.state_dict(), local.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # The snapshot huggingface_hub returned is the one laid out above; a repo id the cache
    # lacks is one line, not a download.
    with pytest.raises(PretrainedError, match="cannot fetch someone/not-cached from the Hugging"):
        from_pretrained("someone/not-cached")


def test_evaluate_py_plays_a_repo_id_offline_as_the_local_folder(shared, tmp_path):
    folder, cache = shared
    flags = ["--num_eval_episodes", "2", "--eval_envs", "2", "--seed", "3"]
    results = {}
    for name, source in (("hub", REPO_ID), ("local", folder)):
        out = tmp_path / f"{name}.json"
        proc = run_offline(cache, "evaluate.py", "--checkpoint", source, *flags, "--json", out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[name] = [t["returns"] for t in json.loads(out.read_text())["targets"]]
    assert results["hub"] == results["local"] and results["hub"][0]


@pytest.mark.parametrize(
    "phase, flags",
    [
        ("offline", ["--learning_rate", "1e-12"]),
        ("online", ["--online_rounds", "1", "--online_episodes", "1", "--online_updates", "2"]),
    ],
)
def test_init_from_a_repo_id_fine_tunes_offline_and_online(shared, data_dir, tmp_path, phase,
                                                           flags):  # fmt: skip
    """--init_from OWNER/NAME with no network: the run starts from the cached repo's weights
    (a vanishing learning rate keeps them) and acts with its state statistics."""
    folder, cache = shared
    out = tmp_path / phase
    proc = run_offline(
        cache, "experiment.py", "--env", "hopper", "--data_dir", data_dir, "--out_dir", out,
        *TINY, *STOCHASTIC, "--max_iters", "1", "--export", "false", "--init_from", REPO_ID,
        *flags,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    acting = json.loads((folder / "config.json").read_text())["acting"]
    assert np.array_equal(ckpt["state_mean"].numpy(), np.float32(acting["state_mean"]))
    assert ckpt["config"]["init_from"] == REPO_ID
    if phase == "offline":
        base = from_pretrained(folder).state_dict()
        worst = max((ckpt["model"][k].float() - v.float()).abs().max().item()
                    for k, v in base.items())  # fmt: skip
        assert worst < 1e-6
    else:
        assert ckpt["online"]


# ---------------------------------------------------------------------------------------------
# Upload: HfApi's two calls recorded instead of sent (tests/hub_fakes.py)
# ---------------------------------------------------------------------------------------------

SECRET = "hf_test_secret_0123456789abcdef"


def test_push_sends_the_three_files_to_the_repo_and_writes_no_token(shared, tmp_path, monkeypatch,
                                                                      capsys):  # fmt: skip
    folder = tmp_path / "dt-hopper"
    shutil.copytree(shared[0], folder)
    (folder / "notes.txt").write_text("mine, not the model's")  # not part of a model folder
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_TOKEN", SECRET)  # the user's login, as huggingface_hub reads it
    rec = record_hub_calls(monkeypatch)

    proc = run_main(hub.main, folder, REPO_ID, "--private", "--message", "first model")
    assert proc.returncode == 0, proc.stderr
    assert f"uploaded {folder} to {REPO_ID}: {COMMIT_URL}" in capsys.readouterr().out
    (create, c_args, c_kw), (upload, _, _) = rec.calls
    assert create == "create_repo" and upload == "upload_folder"
    assert c_args == (REPO_ID,) and c_kw == {"private": True, "exist_ok": True}
    kwargs, sent = rec.sent()
    assert kwargs["repo_id"] == REPO_ID and Path(kwargs["folder_path"]) == folder
    assert kwargs["commit_message"] == "first model" and kwargs.get("token") is None
    assert sent == ["README.md", "config.json", "model.safetensors"]
    # The folder as it was; the token in no file of it nor of huggingface_hub's home.
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    written = [p for root in (folder, hf_home) if root.exists() for p in root.rglob("*")]
    assert not [p for p in written if p.is_file() and SECRET.encode() in p.read_bytes()]
