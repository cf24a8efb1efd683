"""experiment.py end to end as a subprocess, on datasets made from the real simulator."""

import json

import numpy as np
import pytest
import torch
from cli import TINY, run_main, run_script
from decision_transformer.data.pickle_io import save_paths
from decision_transformer.run import experiment
from rollouts import rollout_paths, write_dataset

ORIGINAL_KEYS = [
    "time/training",
    "time/evaluation",
    "training/train_loss_mean",
    "training/action_error",
    "evaluation/target_6000_return_mean",
    "evaluation/target_6000_return_std",
    "evaluation/target_6000_length_mean",
    "evaluation/target_6000_length_std",
    "evaluation/target_3000_return_mean",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=12, seed=0)
    return d


@pytest.mark.parametrize("model_type", ["dt", "bc"])
def test_trains_and_evaluates_end_to_end(data_dir, tmp_path, model_type):
    out = tmp_path / "run"
    proc = run_script(
        "experiment.py",
        "--env",
        "humanoid-medium-v2",
        "--model_type",
        model_type,
        "--data_dir",
        data_dir,
        "--out_dir",
        out,
        *TINY,
        check=True,
    )
    for key in ORIGINAL_KEYS:
        assert f"{key}: " in proc.stdout  # the original's log lines, printed each iteration
    assert "Iteration 2" in proc.stdout and "parameters" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [5, 10]
    assert all(set(ORIGINAL_KEYS) <= r.keys() for r in rows)
    assert rows[-1]["evaluation/target_6000_length_mean"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["env"] == "humanoid" and cfg["dataset"] == "medium" and cfg["model_type"] == model_type
    )
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2 and ckpt["state_mean"].shape == (348,)


def test_skip_evaluation_and_wandb_offline(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    args = [*TINY, "--num_eval_episodes", "0", "--max_iters", "1"]
    proc = run_script(
        "experiment.py",
        "--env",
        "humanoid",
        "--dataset",
        "medium",
        "--data_dir",
        data_dir,
        "--out_dir",
        out,
        "-w",
        *args,
        check=True,
    )
    assert "evaluation/" not in proc.stdout
    assert list((out / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    row = json.loads((out / "metrics.jsonl").read_text())
    assert "training/train_loss_mean" in row


def test_existing_run_needs_resume(data_dir, tmp_path):
    args = [
        "--env",
        "humanoid",
        "--dataset",
        "medium",
        "--data_dir",
        data_dir,
        "--out_dir",
        tmp_path / "r",
        *TINY,
        "--max_iters",
        "1",
        "--num_eval_episodes",
        "0",
    ]
    run_script("experiment.py", *args, check=True)
    # The refusals through the entry function (a real process refuses in test_bad_input_all).
    proc = run_main(experiment.main, *args)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    proc = run_main(experiment.main, *args, "--resume", "--K", "7")
    assert proc.returncode == 2 and "K" in proc.stderr
    # More iterations extend a constant-rate run, but would stretch a cosine one already walked.
    cosine = [*args, "--out_dir", tmp_path / "c", "--lr_decay", "cosine"]
    run_script("experiment.py", *cosine, check=True)
    proc = run_main(experiment.main, *cosine, "--resume", "--max_iters", "2")
    assert proc.returncode == 2 and "max_iters" in proc.stderr
    proc = run_script("experiment.py", *args, "--resume", "--max_iters", "2")
    assert proc.returncode == 0, proc.stderr


# --- bad input: one line, exit code 2, before any training -----------------------------------


def bad_paths(kind):
    paths = rollout_paths("humanoid", 2, max_steps=30)
    if kind == "nan":
        paths[1]["observations"][3, 5] = np.nan
    elif kind == "empty":
        paths = []
    return paths


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset", "expert"], "python data/download_d4rl_datasets.py --env humanoid"),
        (["--dataset", "collected"], "python data/collect_dataset.py --env humanoid"),
        (["--env", "pendulum"], "known envs are hopper"),
        (["--batch_size", "0"], "--batch_size must be positive"),
        (["--K", "-1"], "--K must be positive"),
        (["--max_iters", "0"], "--max_iters must be positive"),
        (["--num_steps_per_iter", "0"], "--num_steps_per_iter must be positive"),
        (["--env", "humanoid-expert-v2", "--dataset", "medium"], "names dataset 'expert'"),
        (["--embed_dim", "30", "--n_head", "4"], "not divisible by --n_head"),
    ],
)
def test_bad_flags_fail_fast(data_dir, tmp_path, capsys, args, needle):
    flags = {
        "--env": "humanoid",
        "--dataset": "medium",
        "--data_dir": str(data_dir),
        "--out_dir": str(tmp_path / "r"),
        **dict(zip(TINY[::2], TINY[1::2])),
        **dict(zip(args[::2], args[1::2])),
    }
    argv = [x for kv in flags.items() for x in kv]
    # In-process through the entry function; the first case also as users run it.
    if args == ["--dataset", "expert"]:
        proc = run_script("experiment.py", *argv)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = experiment.main(argv), capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    # Refused before any work: no run folder.
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("nan", "NaN or inf"),
        ("empty", "no trajectories"),
        ("hopper", "dims 11/3 but env 'humanoid' has 348/17"),
    ],
)
def test_bad_datasets_fail_fast(tmp_path, capsys, kind, needle):
    paths = rollout_paths("hopper", 2, max_steps=30) if kind == "hopper" else bad_paths(kind)
    save_paths(paths, tmp_path / "humanoid-medium-v2.pkl")
    argv = ["--env", "humanoid", "--data_dir", str(tmp_path), "--out_dir", str(tmp_path / "r")]
    code = experiment.main([*argv, *TINY])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_torchrun_two_processes_rank0_writes(data_dir, tmp_path):
    """Two CPU processes (gloo) train together; rank 0 alone logs, evaluates and checkpoints;
    the weights are those of one process trained on both ranks' batches (they would not be if
    the model were never wrapped in DDP). No dropout: ranks' noise differs from one process's."""
    out = tmp_path / "ddp"
    proc = run_script(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "experiment.py",
        "--env",
        "humanoid",
        "--data_dir",
        data_dir,
        "--out_dir",
        out,
        *TINY,
        "--dropout",
        "0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Iteration 2") == 1  # printed by rank 0 only
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    ddp = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ddp["iteration"] == 2
    one = tmp_path / "one"
    args = ["--env", "humanoid", "--data_dir", data_dir, "--out_dir", one, *TINY, "--dropout", "0"]
    run_script("experiment.py", *args, "--batch_size", "16", "--num_eval_episodes", "0", check=True)
    ref = torch.load(one / "checkpoint.pt", weights_only=True)["model"]
    assert max((ddp["model"][k] - ref[k]).abs().max().item() for k in ref) < 1e-5
