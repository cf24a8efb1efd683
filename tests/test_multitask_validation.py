"""--val_episodes and --select_by val_error in a multi-task run (--tasks; Hopper + Walker2d data
from the real simulator): each task holds out what a single-task run of its dataset holds out
and trains on the rest only; each task's logged error is a single-task validation of its own
view of the model, their mean selects best.pt, exactly across kill -9 and resume; 2 ranks log
what 1 process logs; plot.py and evaluate.py read it; return@ selection is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import TINY, assert_one_line_error, run_main, run_script
from decision_transformer.data.sampler import BatchSampler
from decision_transformer.run.config import build_parser, resolve
from decision_transformer.run.multitask_run import MultiTaskRun
from decision_transformer.run.run import Run
from decision_transformer.training.validation import VALIDATION_KEY, task_validation_key
from host_syncs import HostSyncCounter
from rollouts import write_two_tasks
from test_distributed import torchrun_args

KILL_AT = str(Path(__file__).resolve().parent / "kill_at.py")
TASKS = ["hopper:medium", "walker2d:medium"]
NAMES = ["hopper-medium", "walker2d-medium"]
QWEN = ["--n_head", "2", "--n_kv_head", "1"]
# No rollouts: the validation error alone selects, so these runs cost seconds.
FAST = [*TINY, *QWEN, "--num_eval_episodes", "0", "--export", "false"]
VAL = ["--val_episodes", "2", "--val_windows", "12"]
# A rate at which the tiny model's validation error stops falling within 4 iterations.
BUMPY = ["--learning_rate", "1e-1", "--warmup_steps", "1", "--max_iters", "4", "--seed", "6"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_two_tasks(d)
    return d


def config(data_dir, out, *args, backbone: str = "qwen3"):
    argv = [*FAST, "--data_dir", str(data_dir), "--out_dir", str(out), *args]
    return resolve(build_parser(qwen=backbone == "qwen3").parse_args(argv), backbone)


def single(data_dir, out, task: str, *args):
    """A single-task run of ``task``'s dataset with these flags (its inputs loaded)."""
    env, dataset = task.split(":")
    run = Run(config(data_dir, out, "--env", env, "--dataset", dataset, *args))
    run.load_inputs()
    return run


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- held-out episodes -------------------------------------------------------------------------


@pytest.mark.parametrize("held", ["2", "0.4"])
def test_each_task_holds_out_its_single_task_runs_episodes_and_trains_on_the_rest(
    data_dir, tmp_path, monkeypatch, held
):
    args = ["--val_episodes", held, "--seed", "3", "--pct_traj", "0.8"]
    run = MultiTaskRun(config(data_dir, tmp_path / "multi", "--tasks", *TASKS, *args))
    data, _ = run.load_inputs()
    for task, t in zip(TASKS, data.tasks):
        one = single(data_dir, tmp_path / task.replace(":", "-"), task, *args)
        assert len(t.val_episodes) == 2 and len(t.train_episodes) + 2 == len(t.dataset.lengths)
        np.testing.assert_array_equal(t.val_episodes, one.data.val_episodes)
        np.testing.assert_array_equal(t.train_episodes, one.data.train_episodes)
        # The training episodes' state statistics, as the single-task run normalises with.
        np.testing.assert_array_equal(t.dataset.state_mean, one.data.dataset.state_mean)
        np.testing.assert_array_equal(t.dataset.state_std, one.data.dataset.state_std)
    # The two datasets differ in size (6 and 5 episodes): the seed's draw tells them apart.
    assert data.tasks[0].val_episodes.tolist() != data.tasks[1].val_episodes.tolist()

    drawn: dict[int, list] = {0: [], 1: []}
    draw = BatchSampler.draw

    def recording(self, batch_size):
        ep, si = draw(self, batch_size)
        task = [i for i, t in enumerate(data.tasks) if t.dataset.lengths is self.ds.lengths]
        drawn[task[0]].append(ep)
        return ep, si

    monkeypatch.setattr(BatchSampler, "draw", recording)
    batches = run.make_batches(np.random.default_rng(0))
    for _ in range(200):
        batches()
    for i, (task, t) in enumerate(zip(TASKS, data.tasks)):
        seen = set(np.concatenate(drawn[i]).tolist())
        # --pct_traj applied to the training episodes, as the single-task run applies it.
        one = single(data_dir, tmp_path / f"again-{i}", task, *args)
        wanted = one.make_batches(np.random.default_rng(0)).sampler.episodes
        assert seen == set(wanted.tolist()) and seen <= set(t.train_episodes.tolist())
        assert not seen & set(t.val_episodes.tolist())


# --- the logged numbers ------------------------------------------------------------------------


def test_each_tasks_error_is_a_single_task_validation_of_its_view(data_dir, tmp_path):
    args = [*VAL, "--seed", "4"]
    run = MultiTaskRun(config(data_dir, tmp_path / "multi", "--tasks", *TASKS, *args))
    data, selection = run.load_inputs()
    assert selection.key == VALIDATION_KEY and selection.criterion == "val_error"
    torch.manual_seed(0)
    model = data.build_model(run.cfg).eval()
    validation = run.make_validation()
    with HostSyncCounter() as syncs:
        got = validation(model)
    assert syncs.events == ["tolist"]  # every task's terms in one read
    want = []
    for i, task in enumerate(TASKS):
        # A single-task run of the task's dataset: its own windows, its ValidationSet.
        one = single(data_dir, tmp_path / task.replace(":", "-"), task, *args)
        error = one.make_validation()(model.task_model(i))[VALIDATION_KEY]
        assert got[task_validation_key(NAMES[i])] == pytest.approx(error, rel=1e-6)
        want.append(error)
    assert want[0] != pytest.approx(want[1], rel=1e-3)  # a weighting would show
    # Each task weighs the same, whatever its windows' action entries.
    assert got[VALIDATION_KEY] == pytest.approx(np.mean(want), rel=1e-6)


# --- a real run: best.pt, resume, evaluate.py, plot.py -----------------------------------------


def flags(data_dir, out) -> list:
    return [
        "--tasks", *TASKS, "--data_dir", data_dir, "--out_dir", out, *FAST, *VAL, *BUMPY,
        "--select_by", "val_error",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bumpy_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bumpy") / "run"
    proc = run_script("experiment_qwen.py", *flags(data_dir, out), check=True)
    return out, proc.stdout


def test_the_run_logs_each_task_and_keeps_the_best_mean(bumpy_run):
    out, stdout = bumpy_run
    got = rows(out)
    assert [r["iteration"] for r in got] == [1, 2, 3, 4]
    for r in got:
        per_task = [r[task_validation_key(n)] for n in NAMES]
        assert r[VALIDATION_KEY] == pytest.approx(np.mean(per_task), rel=1e-12)
    errors = [r[VALIDATION_KEY] for r in got]
    want = 1 + errors.index(min(errors))
    assert want < 4, "the run's last iteration is its best: the test would not tell them apart"
    best = load(out / "best.pt")
    assert best["iteration"] == want and best["selection"]["best_value"] == min(errors)
    assert not same_weights(best["model"], load(out / "checkpoint.pt")["model"])
    assert f"best.pt: iteration {want} by val_error" in stdout
    assert "validation: episodes held out per task (hopper-medium 2, walker2d-medium 2" in stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["val_episodes"] == 2 and saved["select_by"] == "val_error"


def test_kill_9_then_resume_keeps_the_selection_exact(data_dir, bumpy_run, tmp_path):
    ref, _ = bumpy_run
    out = tmp_path / "run"
    # Inside iteration 3's third optimizer step: iteration 2's checkpoint is on disk.
    killed = run_script(KILL_AT, "step", 13, "qwen3", *flags(data_dir, out))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert load(out / "checkpoint.pt")["iteration"] == 2
    run_script("experiment_qwen.py", *flags(data_dir, out), "--resume", check=True)
    for g, w in zip(rows(out), rows(ref), strict=True):
        assert {k: v for k, v in g.items() if not k.startswith("time/")} == {
            k: v for k, v in w.items() if not k.startswith("time/")
        }
    a, b = load(out / "best.pt"), load(ref / "best.pt")
    assert a["iteration"] == b["iteration"] and same_weights(a["model"], b["model"])
    assert load(out / "checkpoint.pt")["selection"] == load(ref / "checkpoint.pt")["selection"]


def test_evaluate_py_and_plot_py_read_the_run(bumpy_run, tmp_path):
    from decision_transformer.run import plots

    out, _ = bumpy_run
    report_path = tmp_path / "e.json"
    run_script(
        "evaluate.py", "--checkpoint", out, "--which", "best", "--num_eval_episodes", "1",
        "--eval_envs", "1", "--json", report_path, check=True,
    )  # fmt: skip
    report = json.loads(report_path.read_text())
    best = load(out / "best.pt")
    assert report["checkpoint"].endswith("best.pt") and report["iteration"] == best["iteration"]
    assert report["selection"]["best_iteration"] == best["iteration"]
    assert np.isfinite(report["metrics"]["hopper-medium/target_3600_return_mean"])

    proc = run_main(plots.main, out, "--table", "--out", tmp_path / "c.png")
    assert proc.returncode == 0 and (tmp_path / "c.png").stat().st_size > 0
    run = plots.load_run(out)
    assert run.val_tasks == NAMES
    table = plots.markdown_table([run])
    last = rows(out)[-1][task_validation_key("walker2d-medium")]
    assert "val error @walker2d-medium (final / best)" in table and f"{last:.4g} /" in table


# --- 2 ranks ---------------------------------------------------------------------------------


def shared_flags(data_dir) -> list:
    return [
        "--tasks", *TASKS, "--data_dir", data_dir, *FAST, "--max_iters", "1",
        "--dropout", "0", "--val_episodes", "2", "--val_windows", "9",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_batch_16(data_dir, tmp_path_factory):
    """What the DDP and the FSDP run below are each compared with."""
    one = tmp_path_factory.mktemp("one") / "run"
    run_script("experiment_qwen.py", *shared_flags(data_dir), "--batch_size", "16",
               "--out_dir", one, check=True)  # fmt: skip
    return one


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_log_what_one_process_logs(data_dir, one_process_batch_16, tmp_path, mode):
    """2 gloo ranks x batch 8 (each measuring its share of every task's windows, an odd
    number, one all-reduce) log 1 process x batch 16's per-task errors; under FSDP every rank
    makes the same sharded forward calls through each task's view, or the run would hang."""
    fsdp = ["--fsdp"] if mode == "fsdp" else []
    two = tmp_path / "two"
    launch = [*torchrun_args(2)[:-1], "experiment_qwen.py"]
    run_script(*launch, *shared_flags(data_dir), *fsdp, "--batch_size", "8", "--out_dir", two,
               check=True, timeout=300)  # fmt: skip
    (a,), (b,) = rows(two), rows(one_process_batch_16)
    for key in [VALIDATION_KEY, *map(task_validation_key, NAMES)]:
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert load(two / "best.pt")["iteration"] == 1


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--select_by", "return@max"], "select by val_error with --val_episodes"),
        (["--select_by", "val_error"], "needs held-out episodes"),
        (["--val_episodes", "5"], "task walker2d:medium: --val_episodes 5 holds out 5"),
    ],
)
def test_bad_validation_flags_are_one_line_exit_2(data_dir, tmp_path, extra, needle):
    from decision_transformer.run.experiment import main

    argv = ["--tasks", *TASKS, "--data_dir", data_dir, *TINY, "--out_dir", tmp_path / "r"]
    proc = run_main(main, *argv, *extra)
    assert_one_line_error(proc, needle)
