"""Every user error of every entry point: exit code 2, exactly one line on stderr naming the
problem, no traceback, before long work. Most cases run in-process through the CLI's entry
function (``main(argv)``, as the script calls it); a few per entry point run as real subprocesses
(the CLIs as users run them), marked ``SUBPROCESS``."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli import GYM_DIR, TINY, assert_one_line_error, run_script
from rollouts import rollout_paths, write_dataset

if str(GYM_DIR / "data") not in sys.path:
    sys.path.append(str(GYM_DIR / "data"))

# The entry function each script calls (the script's own few lines aside).
ENTRY = {
    "experiment.py": lambda argv: _module("decision_transformer.run.experiment").main(argv),
    "experiment_qwen.py": lambda argv: _module("decision_transformer.run.experiment").main(
        argv, backbone="qwen3"
    ),
    "evaluate.py": lambda argv: _module("decision_transformer.run.evaluate_checkpoint").main(argv),
    "plot.py": lambda argv: _module("decision_transformer.run.plots").main(argv),
    "train_humanoid_qwen_dt.py": lambda argv: _module("train_humanoid_qwen_dt").main(argv),
    "data/collect_dataset.py": lambda argv: _module("collect_dataset").main(argv),
    "data/download_d4rl_datasets.py": lambda argv: _module("download_d4rl_datasets").main(argv),
}
SUBPROCESS = "subprocess"


def _module(name: str):
    return importlib.import_module(name)


def cli(capsys, script: str, *args, how: str = "in-process"):
    """``script args`` in-process (its entry function, stderr captured) or as a subprocess;
    either way an object with ``returncode`` and ``stderr``."""
    args = [str(a) for a in args]
    if how == SUBPROCESS:
        return run_script(script, *args)
    capsys.readouterr()
    try:
        code = ENTRY[script](args)
    except SystemExit as e:  # argparse exits on its own
        code = e.code
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


class Hostile:
    """Unpickling this runs a shell command: the restricted unpickler must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    write_dataset(d, "humanoid", "medium", episodes=3, max_steps=20)
    return d


def dataset_files(root, marker):
    """name -> bytes of a broken humanoid-medium-v2.pkl (each in its own folder)."""
    paths = rollout_paths("humanoid", 2, max_steps=20)
    buf = pickle.dumps(paths, protocol=5)

    def shaped(edit):
        ps = rollout_paths("humanoid", 2, max_steps=20)
        edit(ps)
        return pickle.dumps(ps, protocol=5)

    return {
        "truncated": buf[: len(buf) // 2],
        "corrupt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "not_a_pickle": b"observations,actions,rewards\n1,2,3\n",
        "hostile": pickle.dumps([Hostile(marker)]),
        "non_dicts": pickle.dumps([[1.0, 2.0], "x"]),
        "missing_keys": shaped(lambda ps: ps[1].pop("actions")),
        "ragged": shaped(lambda ps: ps[0].update(actions=ps[0]["actions"][:-3])),
        "strings": shaped(lambda ps: ps[1].update(rewards=ps[1]["rewards"].astype(str))),
        "obs_dims": shaped(lambda ps: ps[1].update(observations=ps[1]["observations"][:, :5])),
    }


DATASET_NEEDLES = {
    "truncated": "not a readable trajectory file",
    "corrupt": "not a readable trajectory file",
    "not_a_pickle": "not a readable trajectory file",
    "hostile": "refusing to load 'posix.system'",
    "non_dicts": "expected a list of trajectory dicts",
    "missing_keys": "trajectory 1 lacks actions",
    "ragged": "'actions' of trajectory 0 has 17 steps",
    "strings": "'rewards' of trajectory 1 is not a numeric array",
    "obs_dims": "'observations' of trajectory 1 has shape (5,)",
}


@pytest.mark.parametrize("kind", list(DATASET_NEEDLES))
def test_bad_dataset_files(tmp_path, capsys, kind):
    marker = tmp_path / "payload-ran"
    data = tmp_path / "data"
    data.mkdir()
    (data / "humanoid-medium-v2.pkl").write_bytes(dataset_files(tmp_path, marker)[kind])
    out = tmp_path / "run"
    # The hostile pickle in a real process too: the payload must not run there either.
    how = SUBPROCESS if kind == "hostile" else "in-process"
    proc = train_humanoid(capsys, data, out, how=how)
    assert_one_line_error(proc, DATASET_NEEDLES[kind])
    assert "delete it and remake it" in proc.stderr or "regenerate" in proc.stderr
    # No side effect: the payload never ran, no run directory appeared.
    assert not marker.exists() and not out.exists()


def train_humanoid(capsys, data_dir, out_dir, *args, how: str = "in-process"):
    """experiment.py on the humanoid env with TINY flags."""
    return cli(
        capsys, "experiment.py", "--env", "humanoid", "--data_dir", data_dir, "--out_dir",
        out_dir, *TINY, *args, how=how,
    )  # fmt: skip


FLAG_CASES = {
    "pct_traj_zero": (["--pct_traj", "0"], "--pct_traj must be in (0, 1]"),
    "pct_traj_above_one": (["--pct_traj", "1.5"], "--pct_traj must be in (0, 1]"),
    "dropout_one": (["--dropout", "1"], "--dropout must be in [0, 1)"),
    "dropout_negative": (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    "lr_zero": (["-lr", "0"], "--learning_rate must be positive"),
    "lr_negative": (["-lr=-1e-4"], "--learning_rate must be positive"),
    "eval_envs_zero": (["--eval_envs", "0"], "--eval_envs must be positive"),
    "num_eval_episodes_negative": (["--num_eval_episodes", "-1"], "--num_eval_episodes must be"),
    "not_an_int": (["--K", "five"], "argument --K: invalid int value"),
    "unknown_flag": (["--bogus", "1"], "unrecognized arguments: --bogus"),
    "resume_without_checkpoint": (["--resume"], "--resume: no checkpoint at"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_bad_flags(good, tmp_path, capsys, case):
    args, needle = FLAG_CASES[case]
    how = SUBPROCESS if case == "unknown_flag" else "in-process"
    proc = train_humanoid(capsys, good, tmp_path / "run", *args, how=how)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


def broken_checkpoint(run_dir, kind):
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "checkpoint.pt"
    if kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:  # truncated: a real torch.save cut in half, as a non-atomic writer would leave it
        torch.save({"model": {"w": torch.zeros(1000)}, "config": {}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("truncated", "is not a readable checkpoint"),
        ("foreign", "is not a checkpoint written by experiment.py (no optimizer"),
    ],
)
def test_resume_from_a_bad_checkpoint(good, tmp_path, capsys, kind, needle):
    broken_checkpoint(tmp_path / "run", kind)
    proc = train_humanoid(capsys, good, tmp_path / "run", "--resume")
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("missing", "no checkpoint at"),
        ("truncated", "is not a readable checkpoint"),
        ("text", "is not a readable checkpoint"),
        ("foreign", "is not a checkpoint written by experiment.py"),
    ],
)
def test_evaluate_bad_checkpoints(tmp_path, capsys, kind, needle):
    path = tmp_path / "run" / "checkpoint.pt"
    if kind != "missing":
        broken_checkpoint(tmp_path / "run", kind)
    how = SUBPROCESS if kind == "truncated" else "in-process"
    proc = cli(capsys, "evaluate.py", "--checkpoint", path, how=how)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "run" / "eval.json").exists()


def test_minari_id_not_there(tmp_path, monkeypatch):
    # A local store that lacks the id, and no hub: the refusal must come without a network wait.
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_script(
        "experiment.py",
        "--env",
        "humanoid",
        "--dataset",
        "minari:mujoco/humanoid/nothere-v0",
        "--out_dir",
        tmp_path / "run",
        *TINY,
    )
    assert_one_line_error(proc, "Minari dataset 'mujoco/humanoid/nothere-v0' is not in the local")
    assert "offline alternative: python data/collect_dataset.py" in proc.stderr


def test_missing_humanoid_dataset_names_the_offline_route(tmp_path, capsys):
    proc = cli(
        capsys,
        "train_humanoid_qwen_dt.py",
        "--data_dir",
        tmp_path,
        "--out_dir",
        tmp_path / "run",
        "--embed_dim",
        "32",
        "--n_layer",
        "1",
        "--n_head",
        "2",
        "--n_kv_head",
        "1",
        "--head_dim",
        "16",
        "--intermediate_size",
        "64",
    )
    assert_one_line_error(proc, "download_d4rl_datasets.py --env humanoid --datasets medium")
    assert "--dataset collected after `python data/collect_dataset.py --env humanoid" in (
        proc.stderr
    )


@pytest.mark.parametrize("kind", ["missing", "mismatched"])
def test_init_backbone_errors(good, tmp_path, capsys, kind):
    src = tmp_path / "qwen3"
    if kind == "mismatched":
        src.mkdir()
        cfg = {
            "model_type": "qwen3",
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "intermediate_size": 128,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1e6,
        }
        (src / "config.json").write_text(json.dumps(cfg))
    proc = cli(
        capsys,
        "experiment_qwen.py",
        "--env",
        "humanoid",
        "--data_dir",
        good,
        "--out_dir",
        tmp_path / "run",
        *TINY,
        "--n_head",
        "2",
        "--init_backbone",
        src,
    )
    assert_one_line_error(proc, "--init_backbone")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "script,args,needle",
    [
        ("plot.py", ["{tmp}"], "is not a run directory (no metrics.jsonl)"),
        ("data/collect_dataset.py", ["--episodes", "0", "--out", "{tmp}"], "--episodes must be"),
        ("data/collect_dataset.py", ["--env", "pendulum", "--out", "{tmp}"], "unknown env"),
        ("data/download_d4rl_datasets.py", ["--env", "pendulum"], "no datasets for pendulum"),
        ("evaluate.py", ["--num_eval_episodes"], "expected one argument"),
    ],
)
def test_other_entry_points(tmp_path, capsys, script, args, needle):
    # download_d4rl_datasets.py as users run it; the others' subprocess cases are elsewhere.
    how = SUBPROCESS if script.startswith("data/download") else "in-process"
    proc = cli(capsys, script, *[a.format(tmp=tmp_path) for a in args], how=how)
    assert_one_line_error(proc, needle)
