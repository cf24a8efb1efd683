"""A multi-task model travels (--tasks): a two-task run (Hopper + Walker2d, data from the real
simulator) ends with a model folder whose config.json lists its tasks with their sizes,
statistics and targets and whose card lists the per-task returns the run measured; export.py
writes the same from the run; from_pretrained loads it from a path and through the Hub's cache;
evaluate.py --checkpoint FOLDER replays the run's per-task evaluation; --video films one clip per
task or the --video_task one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import TINY, assert_one_line_error, run_main, run_script
from hub_fakes import hub_cache, record_hub_calls
from rollouts import write_two_tasks

TASKS = ["hopper:medium", "walker2d:medium"]
NAMES = ["hopper-medium", "walker2d-medium"]
QWEN = ["--n_head", "2", "--n_kv_head", "1"]
REPO_ID = "someone/dt-two-bodies"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_two_tasks(d)
    return d


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "two"
    args = ["--tasks", *TASKS, "--data_dir", data_dir, *TINY, *QWEN, "--out_dir", out]
    run_script("experiment_qwen.py", *args, check=True)
    return out


def metrics_row(run_dir: Path, iteration: int) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["iteration"] == iteration)


def test_the_run_ends_with_a_folder_of_its_tasks_and_their_measured_returns(run):
    from decision_transformer.envs import make_env
    from decision_transformer.models.pretrained import from_pretrained

    folder = run / "model"
    cfg = json.loads((folder / "config.json").read_text())
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (cfg["architecture"], cfg["backbone"]) == ("multitask_dt", "qwen3_dt")
    assert [t["name"] for t in cfg["tasks"]] == NAMES
    for t in cfg["tasks"]:
        env = make_env(t["acting"]["env"])
        assert t["state_dim"] == env.observation_space.shape[0]
        assert t["act_dim"] == env.action_space.shape[0]
        np.testing.assert_array_equal(t["acting"]["action_low"], env.action_space.low)
        np.testing.assert_array_equal(
            np.float32(t["acting"]["state_mean"]), ckpt["state_mean"][t["name"]].numpy()
        )
        np.testing.assert_array_equal(
            np.float32(t["acting"]["state_std"]), ckpt["state_std"][t["name"]].numpy()
        )
        assert t["acting"]["targets"] == ckpt["eval_targets"][t["name"]]
    # The weights file holds weights only: each task's action bounds are its acting section's.
    from safetensors.torch import load_file

    stored = load_file(folder / "model.safetensors")
    bounds = ("action_scale", "action_bias")
    assert set(stored) == {k for k in ckpt["model"] if not k.endswith(bounds)}
    model = from_pretrained(folder)
    assert type(model).__name__ == "MultiTaskDecisionTransformer"
    state = model.state_dict()
    assert state.keys() == ckpt["model"].keys()
    assert all(torch.equal(state[k], v) for k, v in ckpt["model"].items())
    # The card's numbers are the run's own evaluation of these weights, per task.
    row = metrics_row(run, ckpt["iteration"])
    card = (folder / "README.md").read_text()
    ev = cfg["evaluation"]
    assert ev["measured_by"].startswith(f"the run, at iteration {ckpt['iteration']}")
    for task in ev["tasks"]:
        assert f"| {task['name']} |" in card
        for r in task["targets"]:
            key = f"evaluation/{task['name']}/target_{r['target']:g}_return_mean"
            assert r["return_mean"] == row[key]
            assert f"{task['name']} mean return at target {r['target']:g}" in card
    for label, value in ev["mean_normalized_score"].items():
        assert value == row[f"evaluation/mean/{label}_normalized_score"]


def test_export_and_evaluate_py_on_the_folder_replay_the_runs_evaluation(run, tmp_path):
    """export.py evaluates the folder it writes; evaluate.py --checkpoint FOLDER and
    evaluate.py on the run's checkpoint give the same per-task numbers, which are the run's."""
    out = tmp_path / "exported"
    proc = run_script("export.py", run, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "walker2d-medium target 5000" in proc.stdout
    exported = json.loads((out / "config.json").read_text())["evaluation"]
    assert "measured_by" not in exported  # played again, from the written folder
    row = metrics_row(run, 2)
    folder_json, run_json = tmp_path / "f.json", tmp_path / "r.json"
    proc = run_script("evaluate.py", "--checkpoint", out, "--num_eval_episodes", "2",
                      "--eval_envs", "2", "--json", folder_json)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert run_script("evaluate.py", "--checkpoint", run, "--json", run_json).returncode == 0
    replayed = json.loads(folder_json.read_text())
    from_run = json.loads(run_json.read_text())["metrics"]
    for report in (exported, replayed):
        for task in report["tasks"]:
            for r in task["targets"]:
                key = f"{task['name']}/target_{r['target']:g}"
                assert r["return_mean"] == row[f"evaluation/{key}_return_mean"], key
                assert r["return_mean"] == from_run[f"{key}_return_mean"], key
                assert len(r["returns"]) == 2
    assert replayed["mean_normalized_score"] == exported["mean_normalized_score"]


def test_video_films_each_task_or_the_chosen_one(run, tmp_path):
    """--video PATH: one clip per task (PATH-<task>), each the evaluated episode of that task's
    first target (the replay's return is the evaluation's); --video_task NAME: that one, to
    PATH. The same for the run's checkpoint and for its model folder."""
    report = tmp_path / "f.json"
    flags = ["--num_eval_episodes", "2", "--eval_envs", "2", "--json", report]
    proc = run_script("evaluate.py", "--checkpoint", run / "model", "--video", tmp_path / "ep.gif",
                      *flags)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(report.read_text())
    for task in got["tasks"]:
        clip = tmp_path / f"ep-{task['name']}.gif"
        assert clip.stat().st_size > 0
        video = got["videos"][task["name"]]
        assert video["path"] == str(clip)
        assert video["episode_return"] == pytest.approx(task["targets"][0]["returns"][0])
        assert video["frames"] == task["targets"][0]["lengths"][0] + 1
    one = tmp_path / "walker.gif"
    proc = run_script("evaluate.py", "--checkpoint", run, "--video", one, "--video_task",
                      "walker2d-medium", "--json", tmp_path / "r.json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    videos = json.loads((tmp_path / "r.json").read_text())["videos"]
    assert list(videos) == ["walker2d-medium"] and one.stat().st_size > 0
    assert videos["walker2d-medium"]["episode_return"] == pytest.approx(
        got["videos"]["walker2d-medium"]["episode_return"]
    )
    assert not (tmp_path / "walker-hopper-medium.gif").exists()


def test_from_pretrained_and_push_take_the_hub_path(run, tmp_path, monkeypatch):
    """A repo id resolves through huggingface_hub's cache (offline) to the same model as the
    local folder; push_to_hub.py uploads the folder's three files."""
    from decision_transformer.models.pretrained import from_pretrained
    from decision_transformer.run import hub
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    hub_cache(cache, REPO_ID, run / "model")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    remote, local = from_pretrained(REPO_ID), from_pretrained(run / "model")
    assert remote.pretrained_config.to_dict() == local.pretrained_config.to_dict()
    assert all(torch.equal(v, local.state_dict()[k]) for k, v in remote.state_dict().items())
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    rec = record_hub_calls(monkeypatch)
    assert hub.main([str(run / "model"), REPO_ID]) == 0
    kwargs, files = rec.sent()
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert kwargs["commit_message"] == "Upload multitask_dt for Hopper-v5, Walker2d-v5"


def _edit(folder: Path, tmp_path: Path, edit) -> Path:
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "config.json").read_text())
    edit(cfg)
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


def _wider_state(cfg):
    cfg["tasks"][1]["state_dim"] = 18


def _short_std(cfg):
    cfg["tasks"][0]["acting"]["state_std"] = cfg["tasks"][0]["acting"]["state_std"][:-1]


def _no_tasks(cfg):
    del cfg["tasks"]


def _swapped(cfg):
    cfg["tasks"] = cfg["tasks"][::-1]


@pytest.mark.parametrize(
    "edit, needle",
    [
        (_wider_state, "task walker2d-medium's state_dim 18 disagrees with its acting"),
        (_short_std, "acting.state_std has 10 values, the model's dimension is 11"),
        (_no_tasks, "lacks its 'model' or 'tasks' section"),
        (_swapped, "are not its first task's with the longest episode cap"),
    ],
)
def test_a_bad_multitask_folder_is_one_line(run, tmp_path, edit, needle):
    from decision_transformer.run.export import evaluate_main

    proc = run_main(evaluate_main, _edit(run / "model", tmp_path, edit))
    assert_one_line_error(proc, needle)


@pytest.mark.parametrize(
    "tool, args, needle",
    [
        ("evaluate", ["--video", "v.gif", "--video_task", "ant-medium"], "no such task"),
        ("evaluate", ["--video_task", "hopper-medium"], "add --video PATH"),
        ("folder", ["--target_return", "100"], "plays each task at its own targets"),
        ("export", ["--target_return", "100"], "each task evaluated at its own targets"),
    ],
)
def test_what_a_multitask_model_cannot_take_is_one_line(run, tmp_path, tool, args, needle):
    from decision_transformer.run import evaluate_checkpoint, export

    args = [str(tmp_path / a) if a.endswith(".gif") else a for a in args]
    if tool == "evaluate":
        proc = run_main(evaluate_checkpoint.main, "--checkpoint", run, *args)
    elif tool == "folder":
        proc = run_main(export.evaluate_main, run / "model", *args)
    else:
        proc = run_main(export.main, run, "--out", tmp_path / "m", *args)
    assert_one_line_error(proc, needle)
    assert not list(tmp_path.iterdir())


def test_a_single_task_run_cannot_start_from_a_multitask_folder(run, data_dir, tmp_path):
    from decision_transformer.run.experiment import main

    proc = run_main(main, "--env", "hopper", "--dataset", "medium", "--data_dir", data_dir,
                    *TINY, "--init_from", run / "model", "--out_dir", tmp_path / "r")  # fmt: skip
    assert_one_line_error(proc, "is a multi-task model (hopper-medium, walker2d-medium)")


def test_video_task_on_a_single_task_model_is_one_line(tmp_path):
    """--video_task picks among a multi-task model's tasks: a single-task run refuses it."""
    from decision_transformer.run import evaluate_checkpoint

    base_run = Path(__file__).parent / "data" / "run_ae7ab6b_hopper"  # a single-task run
    proc = run_main(evaluate_checkpoint.main, "--checkpoint", base_run, "--video",
                    tmp_path / "v.gif", "--video_task", "hopper-medium")  # fmt: skip
    assert_one_line_error(proc, "--video_task picks a task of a multi-task run")
