"""evaluate.py (numbers, video) and plot.py on run directories made by the real training CLI."""

import importlib.util
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from cli import TINY, run_script
from decision_transformer.run import evaluate_checkpoint, plots
from decision_transformer.run.metrics import read_metrics
from PIL import Image
from rollouts import write_dataset

# Evaluation numbers every metrics.jsonl evaluation row has per target.
STAT_KEYS = ("return_mean", "return_std", "length_mean", "length_std")


def train(data_dir, out, *flags, script="experiment.py", env="humanoid-medium-v2"):
    run_script(
        script,
        "--env",
        env,
        "--data_dir",
        data_dir,
        "--out_dir",
        out,
        *TINY,
        *flags,
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=12, seed=0)
    write_dataset(d, "hopper", "medium", episodes=12, seed=0)
    return d


@pytest.fixture(scope="module")
def dt_run(data_dir, tmp_path_factory):
    """GPT-2 DT evaluated by the one-episode evaluator, on a target read off the dataset."""
    out = tmp_path_factory.mktemp("runs") / "dt-seq"
    return train(data_dir, out, "--eval_envs", "1", "--env_targets", "max", "--seed", "4")


@pytest.fixture(scope="module")
def bc_run(data_dir, tmp_path_factory):
    """BC on Hopper (which has D4RL reference scores), evaluated in batches: 3 episodes over 2
    envs is a full chunk and a partial one."""
    out = tmp_path_factory.mktemp("runs") / "bc-batched"
    return train(
        data_dir,
        out,
        "--model_type",
        "bc",
        "--eval_envs",
        "2",
        "--num_eval_episodes",
        "3",
        "--max_iters",
        "1",
        env="hopper-medium-v2",
    )


def evaluate(*args, check=True):
    return run_script("evaluate.py", *args, check=check)


def training_eval(run_dir) -> dict:
    """The last evaluation training logged, keyed as evaluate.py's 'metrics'."""
    row = read_metrics(run_dir)[-1]
    return {k[len("evaluation/") :]: v for k, v in row.items() if k.startswith("evaluation/")}


@pytest.mark.parametrize("run", ["dt_run", "bc_run"])
def test_evaluate_reproduces_the_runs_last_evaluation(run, request):
    run_dir = request.getfixturevalue(run)
    proc = evaluate("--checkpoint", run_dir / "checkpoint.pt")
    report = json.loads((run_dir / "eval.json").read_text())  # the default place
    expected = training_eval(run_dir)
    assert expected and report["metrics"] == expected  # exactly, not approximately
    cfg = json.loads((run_dir / "config.json").read_text())
    assert report["num_eval_episodes"] == cfg["num_eval_episodes"]
    assert report["eval_envs"] == cfg["eval_envs"] and report["seed"] == cfg["seed"]
    assert report["dtype"] == cfg["dtype"] == "fp32" and report["tf32"] is False  # a CPU run
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(report["targets"])  # header + one row per target
    for t in report["targets"]:
        assert len(t["returns"]) == cfg["num_eval_episodes"] == len(t["lengths"])
        assert f"| {t['target']:g} | {t['return_mean']:.1f} ± " in proc.stdout
    if run == "bc_run":  # Hopper has D4RL reference scores: normalized scores are reported
        assert any(k.endswith("_normalized_score") for k in expected)
        assert "normalized score |" in table[0]
    if run == "dt_run":
        # 'max' was resolved from the dataset during training; the checkpoint kept it.
        [target] = report["targets"]
        assert target["target"] > 100 and f"target_{target['target']:g}_return_mean" in expected


@pytest.mark.parametrize(
    "run_device,device,tf32",
    [("cuda:0", "cuda", True), ("cuda:3", "cuda:0", True), ("cpu", "cuda", False)]
    + [("cuda:0", "cpu", False), ("cpu", "cpu", False)],
)
def test_evaluate_uses_the_runs_tf32(run_device, device, tf32):
    """A run trained on CUDA ran its fp32 matmuls (training and its own evaluation) in TF32;
    evaluate.py on CUDA does too, and leaves IEEE fp32 alone otherwise. (CPU only here: the
    switches are torch's global flags, which a CPU build sets and reads all the same.)"""
    from decision_transformer.run.evaluate_checkpoint import match_run_numerics

    # Saved and restored by hand: torch 2.13's cuBLAS flag object hides the attribute from
    # monkeypatch's getattr, whose undo then fails.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        assert match_run_numerics(run_device, device) is tf32
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_batched_evaluation_agrees_with_the_sequential_run(dt_run, tmp_path):
    out = tmp_path / "batched.json"
    evaluate("--checkpoint", dt_run / "checkpoint.pt", "--eval_envs", "2", "--json", out)
    report = json.loads(out.read_text())
    assert report["eval_envs"] == 2
    expected = training_eval(dt_run)
    assert report["metrics"].keys() == expected.keys()
    for k, v in expected.items():
        # Batched matmuls round differently in the last bits; nothing more may differ.
        assert report["metrics"][k] == pytest.approx(v, rel=1e-5), k


def test_overrides_change_what_is_played(bc_run, tmp_path):
    out = tmp_path / "e.json"
    evaluate(
        "--checkpoint",
        bc_run,  # a run directory works too
        "--num_eval_episodes",
        "1",
        "--seed",
        "7",
        "--target_return",
        "1234",
        "--json",
        out,
    )
    report = json.loads(out.read_text())
    assert report["episode_seeds"] == [700_000] and report["seed"] == 7
    assert [t["target"] for t in report["targets"]] == [1234.0]
    assert len(report["targets"][0]["returns"]) == 1


def test_qwen3_bf16_run_is_reproduced(data_dir, tmp_path):
    if importlib.util.find_spec("decision_transformer.models.decision_transformer_qwen3") is None:
        pytest.skip("the Qwen3 DT (models/decision_transformer_qwen3.py) is not there yet")
    run_dir = train(
        data_dir,
        tmp_path / "qwen",
        "--dtype",
        "bf16",
        "--max_iters",
        "1",
        "--env_targets",
        "3000",
        script="experiment_qwen.py",
    )
    evaluate("--checkpoint", run_dir / "checkpoint.pt")
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["backbone"] == "qwen3"
    assert report["metrics"] == training_eval(run_dir)


def _frames_change(frames: np.ndarray) -> float:
    """Mean pixel change between the first and last frames, below the text box."""
    return float(np.abs(frames[-1, 150:].astype(int) - frames[0, 150:].astype(int)).mean())


def _smallest_step_change(frames: np.ndarray) -> float:
    """The least mean pixel change between consecutive frames, below the text box (whose step
    counter changes every frame anyway): 0 where the video froze or repeated a frame."""
    scene = frames[:, 150:].astype(np.int16)
    return float(np.abs(np.diff(scene, axis=0)).mean(axis=(1, 2, 3)).min())


def test_video_mp4_is_evaluation_episode_zero(dt_run, tmp_path):
    video, out = tmp_path / "episode.mp4", tmp_path / "e.json"
    proc = evaluate(
        "--checkpoint",
        dt_run / "checkpoint.pt",
        "--num_eval_episodes",
        "1",
        "--video",
        video,
        "--json",
        out,
    )
    report = json.loads(out.read_text())
    length = report["targets"][0]["lengths"][0]
    # The replayed episode is the evaluated one: same seed, same actions, same return.
    assert report["video"]["episode_return"] == report["targets"][0]["returns"][0]
    assert report["video"]["seed"] == report["episode_seeds"][0]
    frames = iio.imread(video)
    assert frames.shape == (length + 1, 480, 480, 3)  # the reset state, then one per step
    assert _frames_change(frames) > 2
    assert _smallest_step_change(frames) > 0.05, "a frame repeats the one before it"
    assert f"{length + 1} frames" in proc.stdout


def test_video_gif_from_batched_evaluation_has_the_overlay(dt_run, tmp_path):
    from decision_transformer.evaluation.video import make_render_env

    video, out = tmp_path / "episode.gif", tmp_path / "e.json"
    evaluate(
        "--checkpoint",
        dt_run / "checkpoint.pt",
        "--eval_envs",
        "2",
        "--num_eval_episodes",
        "2",
        "--video",
        video,
        "--video_quality",
        "fast",
        "--json",
        out,
    )
    report = json.loads(out.read_text())
    assert report["video"]["episode_return"] == report["targets"][0]["returns"][0]
    gif = Image.open(video)
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB")))
    frames = np.stack(frames)
    assert len(frames) == report["targets"][0]["lengths"][0] + 1
    assert _frames_change(frames) > 2
    assert _smallest_step_change(frames) > 0.05, "a frame repeats the one before it"

    # The same first frame rendered here without text: only the top-left box differs.
    env = make_render_env("humanoid", fast=True)
    env.reset(seed=report["episode_seeds"][0])
    plain = env.render().astype(int)
    env.close()
    diff = np.abs(frames[0].astype(int) - plain).mean(axis=2)
    assert diff[:60, :150].mean() > 30  # darkened box with white text
    assert diff[200:, 200:].mean() < 6  # elsewhere only the GIF palette's rounding
    box = frames[0, :60, :150]
    assert (box.min(axis=2) > 200).sum() > 50  # white text pixels...
    assert (box.max(axis=2) < 40).sum() > 1000  # ...on a dark box


def test_plot_and_table_from_run_directories(dt_run, bc_run, tmp_path):
    out = tmp_path / "curves.png"
    proc = run_script("plot.py", dt_run, bc_run, "--out", out, "--table", check=True)
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 20_000
    with Image.open(out) as im:
        # Returns for 3 targets, scores for Hopper's 2, the loss: two rows of three panels.
        assert im.width > 1200 and im.height > 600
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # drawn, not blank
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and "step time" in rows[0]  # header, one row per run
    dt_row, bc_row = rows[1], rows[2]
    assert dt_row.startswith("| dt-seq | gpt2 |") and bc_row.startswith("| bc-batched | mlp |")
    assert " ms |" in dt_row
    last = read_metrics(bc_run)[-1]
    for key in ("return_mean", "normalized_score"):
        final = last[f"evaluation/target_3600_{key}"]
        assert f"{final:.1f} / {final:.1f}" in bc_row  # one evaluation: final == best
    assert "score @3600" in rows[0] and "return @3600" in rows[0]


# Below, the entry functions are called in-process (plot.py and evaluate.py run as real
# processes above, and in test_bad_input_all's user-facing cases).


def test_table_alone_writes_no_figure(dt_run, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default figure would go
    assert plots.main([str(dt_run), "--table"]) == 0
    out = capsys.readouterr().out
    assert "| dt-seq |" in out and "curves:" not in out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["missing", "garbage", "not_a_run"])
def test_bad_checkpoint_is_one_line_and_exit_2(case, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    if case == "garbage":
        path.write_bytes(b"this is not a torch file\n" * 10)
    elif case == "not_a_run":
        torch.save({"weights": torch.zeros(3)}, path)
    assert evaluate_checkpoint.main(["--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in err and not (tmp_path / "eval.json").exists()


def test_bad_video_path_and_bad_run_dir_exit_2(dt_run, tmp_path, capsys):
    code = evaluate_checkpoint.main(
        ["--checkpoint", str(dt_run), "--video", str(tmp_path / "x.avi"), "--device", "cpu"]
    )
    assert code == 2 and capsys.readouterr().err.strip().startswith("error: --video")
    assert plots.main([str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_config_json_records_the_stack_and_evaluate_warns_on_another(dt_run, tmp_path):
    """The run folder names the versions and CPU behind its numbers; evaluate.py on another
    stack says so in one line (and still evaluates), on the same stack says nothing."""
    import shutil
    from importlib.metadata import version

    recorded = json.loads((dt_run / "config.json").read_text())["versions"]
    for dist in ("mujoco", "gymnasium", "numpy", "ale-py"):
        assert recorded[dist] == version(dist)
    assert recorded["torch"] == torch.__version__ and recorded["cpu"]

    same = evaluate("--checkpoint", dt_run, "--num_eval_episodes", "1")
    assert "warning" not in same.stderr

    moved = shutil.copytree(dt_run, tmp_path / "older")
    cfg = json.loads((moved / "config.json").read_text())
    cfg["versions"]["mujoco"] = "3.17.0"
    (moved / "config.json").write_text(json.dumps(cfg))
    other = evaluate("--checkpoint", moved, "--num_eval_episodes", "1", "--json", tmp_path / "r")
    warned = [line for line in other.stderr.splitlines() if "warning" in line]
    assert warned == [
        "warning: evaluating on other versions than the run's: "
        f"mujoco 3.17.0 -> {version('mujoco')}; returns may differ from its own evaluation"
    ]
    assert json.loads((tmp_path / "r").read_text())["versions"]["mujoco"] == version("mujoco")
