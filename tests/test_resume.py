"""kill -9 at several moments, then --resume: the run ends with the same losses, returns and
weights as one never interrupted. The kills are real SIGKILLs the process sends itself at an
exact moment (tests/kill_at.py), for the GPT-2 DT and for the Qwen3 DT under bf16 autocast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli import TINY, run_script
from rollouts import write_dataset

KILL_AT = str(Path(__file__).resolve().parent / "kill_at.py")
MODELS = {
    "gpt2": ("experiment.py", []),
    "qwen3": (
        "experiment_qwen.py",
        ["--n_head", "2", "--n_kv_head", "1", "--dtype", "bf16", "--dropout", "0.1"],
    ),
    # The ODT reference's recipe (docs/reference.md): LAMB's moments and step counts must
    # survive the kill, as AdamW's do.
    "odt_recipe": (
        "experiment.py",
        [
            "--optimizer",
            "lamb",
            "--weight_decay",
            "5e-4",
            "--no_timestep_embedding",
            "--eval_context",
            "2",
            "--policy",
            "stochastic",
        ],
    ),  # fmt: skip
}
BACKBONE = {"gpt2": "gpt2", "qwen3": "qwen3", "odt_recipe": "gpt2"}
# (moment, n, backbone): the 8th optimizer step is inside iteration 2 (5 steps each); the 3rd
# evaluation call is iteration 2's first target; the 2nd checkpoint is iteration 2's, so
# iteration 2's metrics row is already written when the kill comes (the truncate path).
# The moment decides what resume finds on disk (a row ahead of the checkpoint, a torn temp
# file), whatever the model; the backbone decides what state there is to restore (weights,
# optimizer, bf16 autocast), whatever the moment. So every moment is killed once, and the kill
# inside an optimizer step, where the most state is in flight, on both backbones.
CASES = [
    ("step", 8, "gpt2"), ("step", 8, "qwen3"), ("eval", 3, "gpt2"), ("checkpoint", 2, "qwen3"),
    ("step", 8, "odt_recipe"),
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=6, max_steps=40)
    return d


def flags(data_dir, backbone):
    return [
        "--env",
        "humanoid",
        "--data_dir",
        str(data_dir),
        *TINY,
        "--max_iters",
        "3",
        "--seed",
        "5",
        # The schedule's position must survive the kill too, not only the weights.
        "--lr_decay",
        "cosine",
        *MODELS[backbone][1],
    ]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    runs = {}
    for backbone, (script, _) in MODELS.items():
        out = tmp_path_factory.mktemp(f"ref-{backbone}") / "run"
        run_script(script, *flags(data_dir, backbone), "--out_dir", out, check=True)
        runs[backbone] = out
    return runs


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("moment,n,backbone", CASES)
def test_kill_9_then_resume_equals_uninterrupted(
    data_dir, reference, tmp_path, backbone, moment, n
):
    script, _ = MODELS[backbone]
    out = tmp_path / "run"
    args = [*flags(data_dir, backbone), "--out_dir", str(out)]
    killed = run_script(KILL_AT, moment, n, BACKBONE[backbone], *args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    kept = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
    assert kept == 1  # every moment above falls in iteration 2
    if moment == "checkpoint":
        # Killed between writing iteration 2's row and its checkpoint: the row is on disk, and
        # a torn temp file next to the intact checkpoint.
        assert [r["iteration"] for r in rows(out)] == [1, 2]
        assert list(out.glob("checkpoint.pt*.tmp"))

    run_script(script, *args, "--resume", check=True)
    got, want = rows(out), rows(reference[backbone])
    assert [r["iteration"] for r in got] == [1, 2, 3]
    for g, w in zip(got, want):
        for key in w:
            if not key.startswith("time/"):
                assert g[key] == w[key], (key, g[key], w[key])
    a = torch.load(out / "checkpoint.pt", weights_only=True)
    b = torch.load(reference[backbone] / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert not list(out.glob("*.tmp"))


# --- resuming on a host with fewer GPUs than the one that saved the checkpoint ---------------


def test_cuda_rng_states_of_8_gpus_restore_on_a_host_with_2(tmp_path, monkeypatch):
    """A checkpoint from an 8-GPU node (rank 0 saved one CUDA generator state per visible GPU)
    resumed on a host with 2: the 2 that exist are restored, the rest dropped, no IndexError.
    CUDA is faked: 2 devices, and a per-device restore that fails as ``default_generators[i]``
    does for a device that is not there."""
    import numpy as np
    from decision_transformer.run.checkpoint import (
        load_checkpoint,
        restorable_cuda_states,
        rng_state,
        save_checkpoint,
        set_rng_state,
    )

    rng = np.random.default_rng(3)
    state = rng_state(rng)
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    save_checkpoint(tmp_path / "checkpoint.pt", {"rng": state})
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["rng"]

    restored = {}

    def set_one(new_state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index
        if index >= 2:
            raise IndexError("list index out of range")  # torch.cuda.default_generators[index]
        restored[index] = int(new_state[0])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_one)  # set_rng_state_all's
    set_rng_state(saved, np.random.default_rng(0))
    assert restored == {0: 0, 1: 1}
    # The pure part: as many as the host has, in device order; all of them on a bigger host.
    assert [int(s[0]) for s in restorable_cuda_states(saved["cuda"], 3)] == [0, 1, 2]
    assert len(restorable_cuda_states(saved["cuda"], 16)) == 8
    assert restorable_cuda_states(saved["cuda"], 0) == []


def test_resume_on_another_stack_warns_and_keeps_the_earlier_record(data_dir, reference, tmp_path):
    """config.json names what the run ran on; a resume on other versions says so in one line
    and keeps the record of what the earlier iterations ran on."""
    import shutil
    from importlib.metadata import version

    out = shutil.copytree(reference["gpt2"], tmp_path / "run")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["versions"]["numpy"] == version("numpy")
    cfg["versions"]["numpy"] = "1.26.4"
    (out / "config.json").write_text(json.dumps(cfg))
    # A finished run resumed: nothing left to train, but the folder is opened all the same.
    args = [*flags(data_dir, "gpt2"), "--out_dir", str(out), "--resume"]
    resumed = run_script("experiment.py", *args, check=True)
    assert [x for x in resumed.stderr.splitlines() if "warning" in x] == [
        "warning: resuming on other versions than the run's: "
        f"numpy 1.26.4 -> {version('numpy')}; numbers may differ from a run on one stack"
    ]
    after = json.loads((out / "config.json").read_text())
    assert after["versions"]["numpy"] == version("numpy") and after["seed"] == 5
    assert [v["numpy"] for v in after["earlier_versions"]] == ["1.26.4"]
    # A resume on the same stack adds nothing.
    run_script("experiment.py", *args, check=True)
    assert len(json.loads((out / "config.json").read_text())["earlier_versions"]) == 1
