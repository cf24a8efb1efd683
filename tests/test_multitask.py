"""One DT over several bodies (--tasks): a two-task run (Hopper + Walker2d, data from the real
simulator) trains, resumes after kill -9 bit for bit, and evaluates each task at its own targets,
in the run and in evaluate.py; a mixed batch is one backbone call that each task's own view of
the model reproduces; task sampling; bad --tasks input is one line, exit 2."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import TINY, assert_one_line_error, run_main, run_script
from rollouts import write_two_tasks

KILL_AT = str(Path(__file__).resolve().parent / "kill_at.py")
TASKS = ["hopper:medium", "walker2d:medium"]
QWEN = ["--n_head", "2", "--n_kv_head", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_two_tasks(d)
    return d


def flags(data_dir) -> list[str]:
    return [
        "--tasks", *TASKS, "--data_dir", str(data_dir), *TINY, *QWEN,
        "--max_iters", "3", "--seed", "3", "--lr_decay", "cosine",
    ]  # fmt: skip


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def torchrun_args(nproc: int) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
        "127.0.0.1", "--master_port", str(port), "experiment.py",
    ]  # fmt: skip


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = run_script("experiment_qwen.py", *flags(data_dir), "--out_dir", out, check=True)
    return out, proc.stdout


def test_two_task_run_reports_each_task_at_its_own_targets(data_dir, reference):
    from decision_transformer.data.loading import load_dataset
    from decision_transformer.data.scores import D4RL_REFERENCE_SCORES

    out, stdout = reference
    last = rows(out)[-1]
    # Each env's own default targets, each task's raw return and score by its env's references.
    for task, targets in (("hopper-medium", (3600, 1800)), ("walker2d-medium", (5000, 2500))):
        lo, hi = D4RL_REFERENCE_SCORES[task.split("-")[0]]
        for t in targets:
            key = f"evaluation/{task}/target_{t}"
            score = 100 * (last[f"{key}_return_mean"] - lo) / (hi - lo)
            assert last[f"{key}_normalized_score"] == pytest.approx(score)
    scores = [last[f"evaluation/{t}/target_3600_normalized_score"] for t in ("hopper-medium",)]
    scores.append(last["evaluation/walker2d-medium/target_5000_normalized_score"])
    assert last["evaluation/mean/target1_normalized_score"] == pytest.approx(np.mean(scores))
    assert "walker2d-medium" in stdout and "mean normalized score over tasks" in stdout
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    # Each task's own state statistics: its dataset's.
    for task in TASKS:
        ds = load_dataset(data_dir, *task.split(":"))
        name = task.replace(":", "-")
        np.testing.assert_array_equal(ckpt["state_mean"][name].numpy(), ds.state_mean)
        np.testing.assert_array_equal(ckpt["state_std"][name].numpy(), ds.state_std)
    assert ckpt["eval_targets"] == {"hopper-medium": [3600.0, 1800.0],
                                    "walker2d-medium": [5000.0, 2500.0]}  # fmt: skip


@pytest.mark.parametrize("moment,n", [("step", 8), ("checkpoint", 2)])
def test_kill_9_then_resume_equals_uninterrupted(data_dir, reference, tmp_path, moment, n):
    out = tmp_path / "run"
    args = [*flags(data_dir), "--out_dir", str(out)]
    killed = run_script(KILL_AT, moment, n, "qwen3", *args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1
    run_script("experiment_qwen.py", *args, "--resume", check=True)
    got, want = rows(out), rows(reference[0])
    assert [r["iteration"] for r in got] == [1, 2, 3]
    for g, w in zip(got, want):
        for key in w:
            if not key.startswith("time/"):
                assert g[key] == w[key], (key, g[key], w[key])
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(reference[0] / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_evaluate_py_replays_the_runs_per_task_evaluation(reference, tmp_path):
    out, _ = reference
    proc = run_script("evaluate.py", "--checkpoint", out, "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "e.json").read_text())
    last = rows(out)[-1]
    evaluated = {k: v for k, v in last.items() if k.startswith("evaluation/")}
    assert len(evaluated) == 22  # 2 tasks x 2 targets x 5 numbers, 2 means
    for key, value in evaluated.items():
        assert report["metrics"][key.removeprefix("evaluation/")] == value, key
    assert "hopper-medium" in proc.stdout and "walker2d-medium" in proc.stdout


def test_plot_draws_per_task_curves(reference, tmp_path):
    from decision_transformer.run import plots

    out, _ = reference
    proc = run_main(plots.main, out, "--table", "--out", tmp_path / "c.png")
    assert proc.returncode == 0 and (tmp_path / "c.png").stat().st_size > 0
    runs = [plots.load_run(out)]
    assert runs[0].targets == [
        "hopper-medium/3600", "hopper-medium/1800", "walker2d-medium/5000",
        "walker2d-medium/2500",
    ]  # fmt: skip
    assert runs[0].means == ["target1", "target2"]
    table = plots.markdown_table(runs)
    assert "return @walker2d-medium/5000" in table and "score @hopper-medium/1800" in table


# --- DDP: 2 ranks (gloo) -----------------------------------------------------------------------


def test_ddp_equals_one_process_on_the_union_and_splits_evaluation(data_dir, tmp_path):
    """2 ranks x batch 8 train as 1 process x batch 16 (each rank builds its slice of one
    global draw of mixed tasks, the loss weighted by its share of the action entries), and the
    per-task evaluation split over the ranks is evaluate.py's one-process evaluation."""
    common = [
        "--tasks", *TASKS, "--data_dir", data_dir, *TINY, "--max_iters", "1", "--dropout", "0",
        "--learning_rate", "1e-4", "--warmup_steps", "1", "--num_eval_episodes", "3",
    ]  # fmt: skip

    def train(out, batch, nproc=1):
        launch = torchrun_args(nproc) if nproc > 1 else ["experiment.py"]
        args = [*common, "--batch_size", batch, "--out_dir", tmp_path / out]
        return run_script(*launch, *args, check=True, timeout=300)

    proc = train("ddp", "8", nproc=2)
    assert "global batch: 16 windows per optimizer step (batch_size 8 x 2 processes" in proc.stdout
    train("one", "16")
    train("half", "8")
    ddp, one, half = (weights(tmp_path / p) for p in ("ddp", "one", "half"))
    assert max_diff(ddp, one) < 1e-5
    assert max_diff(half, one) > 1e-4
    from decision_transformer.run.evaluate_checkpoint import main

    assert main(["--checkpoint", str(tmp_path / "ddp"), "--json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())["metrics"]
    row = rows(tmp_path / "ddp")[-1]
    assert len(report) == 22
    for key, value in report.items():
        assert row[f"evaluation/{key}"] == pytest.approx(value, rel=1e-6, abs=1e-6), key


# --- the model: one backbone call per mixed batch --------------------------------------------


def make_parts(data_dir, backbone: str, sampling: str = "uniform"):
    from decision_transformer.data.loading import load_dataset
    from decision_transformer.data.multitask import MultiTaskSampler
    from decision_transformer.data.sampler import BatchSampler
    from decision_transformer.models.factory import ModelConfig, build_multitask_model
    from decision_transformer.run.config import task_shapes

    shapes = task_shapes(TASKS)
    cfg = ModelConfig("dt", backbone, 32, 2, 2, 5, 0.0, n_kv_head=1)
    torch.manual_seed(0)
    model = build_multitask_model(cfg, shapes).eval()
    samplers = [BatchSampler(load_dataset(data_dir, *t.split(":")), 5, 1000, 1000.0) for t in TASKS]
    return model, MultiTaskSampler(samplers, sampling)


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_a_mixed_batch_is_one_backbone_call_that_each_tasks_view_reproduces(
    data_dir, backbone, one_thread
):
    model, sampler = make_parts(data_dir, backbone)
    sampler.rng = np.random.default_rng(1)
    batch = sampler.build(*sampler.draw(16), 5)
    assert [t for t, _ in batch.groups] == [0, 1]  # both bodies in the one batch
    calls = []
    model.transformer.register_forward_hook(lambda *a: calls.append(1))
    states, actions, rewards, dones, rtg, timesteps, mask = batch
    with torch.no_grad():
        _, preds, _ = model(states, actions, rewards, rtg[:, :-1], timesteps, mask, batch.groups)
    assert len(calls) == 1
    # Row by row, each task's single-task view (its own sizes, no padding) acts the same.
    row = 0
    for task, n in batch.groups:
        view = model.task_model(task)
        rows = slice(row, row + n)
        with torch.no_grad():
            _, mine, _ = view(
                states[rows, :, : view.state_dim], actions[rows, :, : view.act_dim], None,
                rtg[rows, :-1], timesteps[rows], mask[rows],
            )  # fmt: skip
        torch.testing.assert_close(preds[rows, :, : view.act_dim], mine, rtol=1e-5, atol=1e-5)
        assert not preds[rows, :, view.act_dim :].any()  # nothing past the task's action size
        row += n
    assert len(calls) == 1 + len(batch.groups)


def test_task_sampling_uniform_and_by_size_is_a_function_of_the_seed(data_dir):
    _, uniform = make_parts(data_dir, "gpt2", "uniform")
    _, size = make_parts(data_dir, "gpt2", "size")
    steps = np.array([s.ds.lengths.sum() for s in size.samplers], dtype=float)
    np.testing.assert_allclose(uniform.p_task, [0.5, 0.5])
    np.testing.assert_allclose(size.p_task, steps / steps.sum())
    assert abs(size.p_task[0] - 0.5) > 0.05  # the two datasets differ in size
    draws = []
    for _ in range(2):
        size.rng = np.random.default_rng([3, 7])
        draws.append(size.draw(4000))
    np.testing.assert_array_equal(draws[0][0], draws[1][0])
    share = np.mean(draws[0][0][:, 0] == 0)
    assert share == pytest.approx(size.p_task[0], abs=0.03)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--tasks", "hopper", "walker2d:medium"], "name the dataset as ENV:DATASET"),
        (["--tasks", "hopper:medium"], "needs two tasks or more"),
        (["--tasks", "dog:medium", "hopper:medium"], "unknown env 'dog'"),
        (["--tasks", "hopper:medium", "hopper:medium"], "lists hopper:medium twice"),
        (["--tasks", *TASKS, "--env", "walker2d"], "drop --env and --dataset"),
        (["--tasks", *TASKS, "--env_targets", "3600"], "each task resolves its own targets"),
        (["--tasks", *TASKS, "--policy", "stochastic"], "--policy stochastic is not supported"),
        (["--tasks", "hopper:medium", "walker2d:expert"], "walker2d-expert-v2.pkl not found"),
        (["--env", "multi"], "--env multi needs --tasks"),
    ],
)
def test_bad_tasks_input_is_one_line_exit_2(data_dir, tmp_path, extra, needle):
    from decision_transformer.run.experiment import main

    proc = run_main(main, *extra, "--data_dir", data_dir, *TINY, "--out_dir", tmp_path / "r")
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "r").exists()


def test_tasks_are_recorded_as_env_dataset_pairs():
    """Any spelling --env/--dataset accept becomes ENV:DATASET in the config (what --resume
    compares and evaluate.py rebuilds the tasks from); a single-task run records none."""
    from decision_transformer.run.config import build_parser, resolve

    argv = ["--tasks", "hopper-medium-v2", "walker2d:medium", "--device", "cpu"]
    multi = resolve(build_parser().parse_args(argv), "gpt2")
    assert multi.to_dict()["tasks"] == TASKS and multi.task_sampling == "uniform"
    assert (multi.env, multi.dataset) == ("multi", "tasks")
    single = resolve(build_parser().parse_args(["--env", "hopper", "--device", "cpu"]), "gpt2")
    assert single.tasks is None and single.to_dict()["tasks"] is None
