"""A multi-task run at scale (--tasks): the Humanoid presets take --tasks and their --dry_run
counts every task's own parameters on the meta device; FSDP2 on 2 gloo ranks trains as one
process on the union of the ranks' batches, resumes exactly, and continues in one process; its
per-task evaluation, split over the ranks in lockstep, is evaluate.py's one-process evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from cli import TINY, run_script
from rollouts import write_two_tasks
from test_distributed import EXACT, NO_EVAL, max_diff, torchrun_args, weights

TASKS = ["hopper:medium", "walker2d:medium"]
EVAL = ["--num_eval_episodes", "3", "--eval_envs", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_two_tasks(d)
    return d


def rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# --- the presets --------------------------------------------------------------------------------


def dry_run_here(capsys, *args) -> tuple[str, dict]:
    import train_humanoid_qwen_dt as preset

    capsys.readouterr()
    assert preset.main(["--dry_run", "--device", "cpu", *args]) == 0
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1])


def task_parts_params(state_dim: int, act_dim: int, d: int) -> int:
    """One task's own layers, counted by hand: state and action embeddings, the action head,
    and the original's state and return heads (Linear: in x out weights + out biases)."""
    embed = (state_dim + 1) * d + (act_dim + 1) * d
    heads = (d + 1) * act_dim + (d + 1) * state_dim + (d + 1)
    return embed + heads


def test_the_presets_take_tasks_and_dry_run_counts_each_tasks_parts(capsys):
    """The qwen3-0.6b preset over Humanoid and Hopper: the backbone is the preset's (440M), each
    task's parts are counted on top (Humanoid 348/17, Hopper 11/3 at width 1024), and the
    memory estimate holds the multi-task model's weights: the Humanoid-only preset's plus
    Hopper's parts."""
    out, multi = dry_run_here(capsys, "--tasks", "humanoid:medium", "hopper:medium")
    _, single = dry_run_here(capsys)
    assert multi["backbone_params"] == single["backbone_params"] == 440_467_456
    d = 1024
    assert multi["task_params"] == {
        "humanoid-medium": task_parts_params(348, 17, d),
        "hopper-medium": task_parts_params(11, 3, d),
    }
    # Humanoid alone and the two tasks share everything but Hopper's parts.
    assert multi["total_params"] - single["total_params"] == task_parts_params(11, 3, d)
    weights_more = multi["memory_bytes"]["weights"] - single["memory_bytes"]["weights"]
    assert weights_more == 4 * task_parts_params(11, 3, d)
    assert "tasks: ['humanoid:medium', 'hopper:medium']" in out.splitlines()
    assert "out_dir: runs/multi-2tasks-dt-qwen3-seed0" in out.splitlines()
    assert "hopper-medium 31,759" in out  # each task's own, in the total


def test_a_preset_trains_several_tasks(data_dir, tmp_path):
    """A preset with --tasks (its backbone flags overridden to a tiny one) is a multi-task run."""
    out = tmp_path / "run"
    tiny = ["--embed_dim", "32", "--n_layer", "1", "--n_head", "2", "--n_kv_head", "1",
            "--head_dim", "16", "--intermediate_size", "64"]  # fmt: skip
    proc = run_script("train_humanoid_qwen_dt.py", "--tasks", *TASKS, "--data_dir", data_dir,
                      *TINY, *tiny, "--max_iters", "1", "--out_dir", out,
                      "--val_episodes", "2", "--val_windows", "8")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tasks"] == TASKS and cfg["preset"] == "qwen3-0.6b" and cfg["env"] == "multi"
    row = rows(out)[-1]
    assert "evaluation/walker2d-medium/target_5000_return_mean" in row
    # Held-out episodes per task, as experiment_qwen.py's multi-task runs hold them out.
    per_task = [row[f"validation/{t.replace(':', '-')}/action_error"] for t in TASKS]
    assert row["validation/action_error"] == pytest.approx(sum(per_task) / len(per_task))


# --- FSDP2: 2 ranks (gloo) ----------------------------------------------------------------------


def train(data_dir, out, *args, nproc: int = 1):
    launch = torchrun_args(nproc) if nproc > 1 else ["experiment.py"]
    common = ["--tasks", *TASKS, "--data_dir", data_dir, "--out_dir", out, *TINY]
    return run_script(*launch, *common, *args, check=True, timeout=300)


# The second run of every FSDP test: each task's return head (models/return_bins.py), trained
# beside the action loss, and evaluated with returns it samples itself (auto) beside max.
HEAD = ["--return_bins", "8", "--env_targets", "auto", "max"]


@pytest.fixture(scope="module", params=[[], HEAD], ids=["plain", "return_head"])
def fsdp_resumed(data_dir, tmp_path_factory, request):
    """FSDP on 2 ranks: one iteration, then --resume for a second; one process on the union of
    the ranks' batches (16) for two iterations, never interrupted."""
    root = tmp_path_factory.mktemp("fsdp")
    out, one = root / "fsdp", root / "one"
    flags = [*EXACT, *EVAL, *request.param, "--fsdp", "--batch_size", "8"]
    first = train(data_dir, out, *flags, "--max_iters", "1", nproc=2)
    train(data_dir, out, *flags, "--max_iters", "2", "--resume", nproc=2)
    train(data_dir, one, *EXACT, *NO_EVAL, *request.param, "--batch_size", "16", "--max_iters", "2")
    return out, one, first.stdout, request.param


def test_fsdp_shards_a_multitask_run_and_resumes_exactly(fsdp_resumed):
    out, one, said, head = fsdp_resumed
    assert "FSDP: parameters sharded over all 2 processes" in said
    assert "global batch: 16 windows per optimizer step (batch_size 8 x 2 processes" in said
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2 and sorted(p.name for p in out.glob("dcp-*")) == ["dcp-000002"]
    assert max_diff(weights(out), weights(one)) < 1e-5
    got, want = rows(out), rows(one)
    assert [r["iteration"] for r in got] == [1, 2]
    for g, w in zip(got, want, strict=True):
        assert g["training/train_loss_mean"] == pytest.approx(w["training/train_loss_mean"], 1e-5)
        assert g["training/learning_rate"] == w["training/learning_rate"]
        if head:  # the head's loss, apart: what the union's one process found
            assert g["training/return_ce"] == pytest.approx(w["training/return_ce"], 1e-5)
    if head:  # the consolidated checkpoint holds each task's head and bins (max_diff: all keys)
        model = weights(out)
        assert {"tasks.0.return_range", "tasks.1.predict_return_bins.weight"} <= model.keys()
        assert not torch.equal(model["tasks.0.return_range"], model["tasks.1.return_range"])
        from safetensors.torch import load_file

        folder = load_file(out / "model" / "model.safetensors")  # exported at the end
        for key in (
            "tasks.0.return_range",
            "tasks.1.return_range",
            "tasks.1.predict_return_bins.weight",
        ):
            assert torch.equal(folder[key], model[key]), key


def test_fsdp_per_task_evaluation_is_evaluate_py_in_one_process(fsdp_resumed, tmp_path):
    """The run's per-task numbers (sharded model, each task's 3 episodes split 2 + 1 over the
    ranks in lockstep, gathered) are what evaluate.py finds on checkpoint.pt in one process;
    with the return head, auto's too (returns sampled from the sharded model's head)."""
    from decision_transformer.run import evaluate_checkpoint

    out = fsdp_resumed[0]
    report = tmp_path / "eval.json"
    assert evaluate_checkpoint.main(["--checkpoint", str(out), "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    row = rows(out)[-1]
    assert len(metrics) == 22  # 2 tasks x 2 targets x 5 numbers, 2 means
    if fsdp_resumed[3]:
        assert "walker2d-medium/target_auto_return_mean" in metrics
    for key, value in metrics.items():
        assert row[f"evaluation/{key}"] == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_an_fsdp_multitask_run_continues_in_one_process(data_dir, fsdp_resumed, tmp_path):
    """Resumed by one process from the consolidated checkpoint (batch 8 now)."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(fsdp_resumed[0], out)
    head = fsdp_resumed[3]
    flags = [*EXACT, *EVAL, *head, "--fsdp", "--batch_size", "8", "--max_iters", "3", "--resume"]
    proc = train(data_dir, out, *flags)
    assert "resuming with 1 processes instead of 2: the global batch is 8 instead of 16" in (
        proc.stdout
    )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 3
    assert [r["iteration"] for r in rows(out)] == [1, 2, 3]
