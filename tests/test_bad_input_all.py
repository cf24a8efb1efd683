"""Bad input on every entry point of both halves, found by going through each flag and path
argument: exit code 2, exactly one line on stderr, no traceback, nothing written, before any
long work. Run in-process through each CLI's entry function (``main(argv)``); a few real
subprocesses per entry point at the end check the same as users meet it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from cli import TINY, run_script
from decision_transformer.run import evaluate_checkpoint, experiment, plots
from rollouts import write_dataset

ROOT = Path(__file__).resolve().parents[1]
ATARI_DIR = ROOT / "atari"
for _p in (ROOT / "gym" / "data", ROOT / "gym", ATARI_DIR):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

READ_ONLY = "/proc/self/x"  # a place no process can create anything in, root included


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with a humanoid dataset, a file where folders are expected, and a finished
    tiny run (evaluate.py and plot.py read it)."""
    d = tmp_path_factory.mktemp("bad")
    write_dataset(d / "data", "humanoid", "medium", episodes=3, max_steps=20)
    (d / "afile").write_text("not a folder\n")
    flags = ["--env", "humanoid", "--data_dir", str(d / "data"), "--out_dir", str(d / "run")]
    assert experiment.main([*flags, *TINY, "--max_iters", "1", "--num_eval_episodes", "1"]) == 0
    return d


def fill(args: list[str], place: Path) -> list[str]:
    return [a.format(d=place, ro=READ_ONLY) for a in args]


def call(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own exit
        return e.code


def assert_one_line(capsys, code: int, needle: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    return lines[0]


def created(place: Path) -> set[str]:
    return {p.name for p in place.iterdir()}


# --- experiment.py / experiment_qwen.py / train_humanoid_qwen_dt.py ------------------------------

EXPERIMENT = {
    "out_dir_is_a_file": (["--out_dir", "{d}/afile"], "--out_dir {d}/afile is a file"),
    "out_dir_under_a_file": (["--out_dir", "{d}/afile/run"], "lies under {d}/afile, which is a"),
    "out_dir_read_only": (["--out_dir", "{ro}"], "cannot write in /proc/self"),
    "device_gpu": (["--device", "gpu"], "--device 'gpu' names no device"),
    "device_meta": (["--device", "meta"], "--device 'meta' names no device"),
    "device_empty": (["--device", ""], "names no device"),
    "device_mps": (["--device", "mps"], "MPS is not available"),
    "device_cuda_index": (["--device", "cuda:3"], "asked for CUDA but none is available"),
    "seed_negative": (["--seed", "-1"], "--seed must be >= 0"),
    "activation_unknown": (["--activation_function", "bogus"], "--activation_function bogus"),
    "lr_inf": (["-lr", "inf"], "--learning_rate must be positive"),
    "wd_inf": (["-wd", "inf"], "--weight_decay must be >= 0"),
    "dist_timeout_nan": (["--dist_timeout", "nan"], "--dist_timeout must be positive"),
    "env_targets_nan": (["--env_targets", "nan"], "argument --env_targets: expected a number"),
    "batch_size_zero": (["--batch_size", "0"], "--batch_size must be positive"),
    "K_zero": (["--K", "0"], "--K must be positive"),
    "embed_dim_zero": (["--embed_dim", "0"], "--embed_dim must be positive"),
    "n_layer_zero": (["--n_layer", "0"], "--n_layer must be positive"),
    "n_head_zero": (["--n_head", "0"], "--n_head must be positive"),
    "heads_do_not_divide": (["--n_head", "3"], "--embed_dim 32 is not divisible by --n_head 3"),
    "grad_accum_zero": (["--grad_accum_steps", "0"], "--grad_accum_steps must be positive"),
    "warmup_negative": (["--warmup_steps", "-1"], "--warmup_steps must be >= 0"),
    "segment_len_zero": (["--attention", "window", "--segment_len", "0"], "--segment_len 0 is"),
    "bc_with_checkpointing": (
        ["--model_type", "bc", "--activation_checkpointing"],
        "--activation_checkpointing recomputes transformer blocks",
    ),
    "data_dir_is_a_file": (["--data_dir", "{d}/afile"], "humanoid-medium-v2.pkl not found"),
    "bad_bool": (["--consolidate_checkpoint", "maybe"], "expected true or false"),
    "bad_choice": (["--dtype", "fp8"], "argument --dtype: invalid choice"),
}

QWEN = {
    "head_dim_zero": (["--head_dim", "0"], "--head_dim must be even for rotary embeddings"),
    "head_dim_negative": (["--head_dim", "-2"], "--head_dim must be even"),
    "head_dim_odd": (["--head_dim", "7"], "--head_dim must be even for rotary embeddings, got 7"),
    "n_kv_head_negative": (["--n_kv_head", "-1"], "--n_kv_head must be a positive integer"),
    "n_kv_head_does_not_divide": (["--n_head", "2", "--n_kv_head", "3"], "not a multiple of"),
    "intermediate_zero": (["--intermediate_size", "0"], "the MLP width must be positive"),
    "mlp_ratio_zero": (["--mlp_ratio", "0"], "the MLP width must be positive"),
    "rope_theta_zero": (["--rope_theta", "0"], "--rope_theta must be positive"),
    "rope_theta_negative": (["--rope_theta", "-1"], "--rope_theta must be positive"),
    "init_backbone_a_file": (["--init_backbone", "{d}/afile"], "--init_backbone: no config.json"),
    "embed_not_divisible": (["--n_head", "2", "--embed_dim", "33"], "--embed_dim 33 is not"),
}


def experiment_argv(place: Path, args: list[str]) -> list[str]:
    base = ["--env", "humanoid", "--data_dir", str(place / "data")]
    if "--out_dir" not in args:
        base += ["--out_dir", str(place / "never")]
    return [*base, *TINY, *fill(args, place)]


@pytest.mark.parametrize("case", list(EXPERIMENT))
def test_experiment(place, capsys, case):
    args, needle = EXPERIMENT[case]
    before = created(place)
    code = call(experiment.main, experiment_argv(place, args))
    assert_one_line(capsys, code, needle.format(d=place))
    assert created(place) == before


@pytest.mark.parametrize("case", list(QWEN))
def test_experiment_qwen(place, capsys, case):
    args, needle = QWEN[case]
    code = call(lambda a: experiment.main(a, backbone="qwen3"), experiment_argv(place, args))
    assert_one_line(capsys, code, needle)
    assert not (place / "never").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--preset", "bogus"], "argument --preset: invalid choice"),
        (["--nproc", "0", "--dry_run"], "--nproc must be positive"),
        (["--model_type", "bc"], "trains the Qwen3 DT: drop --model_type"),
        (["--head_dim", "5"], "--head_dim must be even"),
        (["--out_dir", "{d}/afile"], "--out_dir {d}/afile is a file"),
    ],
)
def test_train_humanoid_qwen_dt(place, capsys, args, needle):
    th = importlib.import_module("train_humanoid_qwen_dt")
    small = ["--embed_dim", "32", "--n_layer", "1", "--n_head", "2", "--n_kv_head", "1"]
    small += ["--head_dim", "16", "--intermediate_size", "64", "--max_iters", "1"]
    argv = ["--data_dir", str(place / "data"), *small, *fill(args, place)]
    code = call(th.main, argv)
    assert_one_line(capsys, code, needle.format(d=place))


# --- evaluate.py ---------------------------------------------------------------------------------

EVALUATE = {
    "episodes_zero": (["--num_eval_episodes", "0"], "--num_eval_episodes must be positive"),
    "eval_envs_zero": (["--eval_envs", "0"], "--eval_envs must be positive"),
    "seed_negative": (["--seed", "-1"], "--seed must be >= 0"),
    "target_nan": (["--target_return", "nan"], "--target_return: expected a number or auto"),
    "video_folder_missing": (["--video", "{d}/nodir/v.mp4"], "its folder {d}/nodir does not"),
    "video_under_a_file": (["--video", "{d}/afile/v.mp4"], "its folder {d}/afile is a file"),
    "video_extension": (["--video", "{d}/v.txt"], "the file must end in .mp4 or .gif"),
    "video_read_only": (["--video", "{ro}.mp4"], "cannot write in /proc/self"),
    "json_is_a_folder": (["--json", "{d}"], "is a folder: name a file in it"),
    "json_under_a_file": (["--json", "{d}/afile/x.json"], "its folder {d}/afile is a file"),
    "json_read_only": (["--json", "{ro}.json"], "cannot write in /proc/self"),
    "device_gpu": (["--device", "gpu"], "--device 'gpu' names no device"),
    "device_cuda": (["--device", "cuda"], "asked for CUDA but none is available"),
    "checkpoint_under_a_file": (["--checkpoint", "{d}/afile/checkpoint.pt"], "no checkpoint at"),
    "checkpoint_missing_folder": (["--checkpoint", "{d}/nothere"], "no checkpoint at"),
    "missing_value": (["--num_eval_episodes"], "expected one argument"),
}


@pytest.mark.parametrize("case", list(EVALUATE))
def test_evaluate(place, capsys, case):
    args, needle = EVALUATE[case]
    argv = fill(args, place)
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", str(place / "run"), "--num_eval_episodes", "1", *argv]
    before = created(place)
    code = call(evaluate_checkpoint.main, argv)
    assert_one_line(capsys, code, needle.format(d=place))
    assert created(place) == before and not (place / "run" / "eval.json").exists()


# --- plot.py -------------------------------------------------------------------------------------

PLOT = {
    "not_a_run": (["{d}"], "is not a run directory (no metrics.jsonl)"),
    "missing_run": (["{d}/nothere"], "no run folder at {d}/nothere"),
    "figure_extension": (["{d}/run", "--out", "{d}/c.xyz"], "--out {d}/c.xyz: the figure must"),
    "figure_is_a_folder": (["{d}/run", "--out", "{d}/run"], "the figure must end in one of"),
    "figure_under_a_file": (["{d}/run", "--out", "{d}/afile/c.png"], "its folder {d}/afile is"),
    "figure_read_only": (["{d}/run", "--out", "{ro}.png"], "cannot write in /proc/self"),
    "no_runs": ([], "the following arguments are required: RUN"),
}


@pytest.mark.parametrize("case", list(PLOT))
def test_plot(place, capsys, case):
    args, needle = PLOT[case]
    before = created(place)
    code = call(plots.main, fill(args, place))
    assert_one_line(capsys, code, needle.format(d=place))
    assert created(place) == before


# --- data/collect_dataset.py, data/download_d4rl_datasets.py ------------------------------------

COLLECT = {
    "out_is_a_file": (["--out", "{d}/afile"], "--out {d}/afile is a file, not a folder"),
    "out_under_a_file": (["--out", "{d}/afile/x"], "lies under {d}/afile, which is a file"),
    "out_read_only": (["--out", "{ro}"], "cannot write in /proc/self"),
    "episodes_zero": (["--episodes", "0", "--out", "{d}/c"], "--episodes must be at least 1"),
    "noise_negative": (["--noise", "-1", "--out", "{d}/c"], "--noise must be a number >= 0"),
    "noise_nan": (["--noise", "nan", "--out", "{d}/c"], "--noise must be a number >= 0"),
    "knee_bend_nan": (["--knee_bend", "nan", "--out", "{d}/c"], "--knee_bend must be a number"),
    "seed_negative": (["--seed", "-1", "--out", "{d}/c"], "--seed must be >= 0"),
    "unknown_env": (["--env", "pendulum", "--out", "{d}/c"], "unknown env 'pendulum'"),
    "minari_id": (["--minari_id", "not an id", "--out", "{d}/c"], "bad --minari_id 'not an id'"),
    "not_an_int": (["--episodes", "many"], "argument --episodes: invalid int value"),
}


@pytest.mark.parametrize("case", list(COLLECT))
def test_collect_dataset(place, capsys, case):
    collect = importlib.import_module("collect_dataset")
    args, needle = COLLECT[case]
    before = created(place)
    code = call(collect.main, ["--episodes", "1", *fill(args, place)])
    assert_one_line(capsys, code, needle.format(d=place))
    assert created(place) == before


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--env", "hopper", "--out", "{d}/afile"], "--out {d}/afile is a file, not a folder"),
        (["--env", "hopper", "--out", "{ro}"], "cannot write in /proc/self"),
        (["--env", "pendulum"], "no datasets for pendulum"),
    ],
)
def test_download_d4rl_datasets(place, capsys, args, needle):
    download = importlib.import_module("download_d4rl_datasets")
    code = call(download.main, fill(args, place))
    assert_one_line(capsys, code, needle.format(d=place))


# --- atari/run_dt_atari.py, atari/create_dataset.py ---------------------------------------------

ATARI_RUN = {
    "not_an_int": (["--epochs", "x"], "argument --epochs: invalid int value: 'x' (see"),
    "unknown_flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "bad_choice": (["--backbone", "llama"], "argument --backbone: invalid choice"),
    "out_dir_is_a_file": (["--out_dir", "{d}/afile"], "--out_dir {d}/afile is a file"),
    "out_dir_under_a_file": (["--out_dir", "{d}/afile/x"], "lies under {d}/afile"),
    "out_dir_read_only": (["--out_dir", "{ro}"], "cannot write in /proc/self"),
    "eval_max_steps_zero": (["--eval_max_steps", "0"], "--eval_max_steps must be positive"),
    "steps_per_epoch_zero": (["--steps_per_epoch", "0"], "--steps_per_epoch must be positive"),
    "seed_negative": (["--seed", "-1"], "--seed must not be negative"),
    "device_gpu": (["--device", "gpu"], "--device 'gpu' names no device"),
    "device_meta": (["--device", "meta"], "--device 'meta' names no device"),
    "lr_zero": (["--learning_rate", "0"], "--learning_rate must be positive"),
    "wd_negative": (["--weight_decay", "-1"], "--weight_decay >= 0"),
    "dropout_one": (["--dropout", "1"], "--dropout must be in [0, 1)"),
    "target_nan": (["--target_return", "nan"], "--target_return must be a number"),
    "rope_theta_zero": (["--backbone", "qwen3", "--rope_theta", "0"], "--rope_theta must be"),
    "head_dim_odd": (["--backbone", "qwen3", "--head_dim", "7"], "--head_dim must be even"),
    "heads_do_not_divide": (["--n_head", "3"], "must be a multiple of --n_head (3)"),
    "block_size": (["--block_size", "4"], "--block_size is 3 tokens per step"),
    "context_zero": (["--context_length", "0"], "--context_length must be positive"),
    "batch_zero": (["--batch_size", "0"], "--batch_size must be positive"),
}


@pytest.mark.parametrize("case", list(ATARI_RUN))
def test_run_dt_atari(place, capsys, case):
    """Each refusal comes before the replay is read (the data prefix here holds nothing)."""
    run_dt_atari = importlib.import_module("run_dt_atari")
    args, needle = ATARI_RUN[case]
    argv = ["--data_dir_prefix", str(place / "nodata") + "/"]
    if "--out_dir" not in args:
        argv += ["--out_dir", str(place / "never")]
    before = created(place)
    code = call(run_dt_atari.main, [*argv, *fill(args, place)])
    line = assert_one_line(capsys, code, needle.format(d=place))
    assert "DQN-Replay" not in line
    assert created(place) == before


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--num_steps", "x"], "argument --num_steps: invalid int value: 'x' (see"),
        (["--num_steps", "0"], "--num_steps and --trajectories_per_buffer must be positive"),
        (["--num_buffers", "0"], "--num_buffers must be in 1..50, got 0"),
        (["--collect", "--out", "{d}/afile"], "--out {d}/afile is a file, not a folder"),
        (["--collect", "--out", "{ro}"], "cannot write in /proc/self"),
        (["--collect", "--buffers", "0", "--out", "{d}/c"], "--buffers must be in 1..50"),
        (["--collect", "--steps_per_buffer", "0", "--out", "{d}/c"], "must be positive"),
        (["--collect", "--seed", "-1", "--out", "{d}/c"], "--seed >= 0"),
    ],
)
def test_atari_create_dataset(place, capsys, args, needle):
    create_dataset = importlib.import_module("create_dataset")
    before = created(place)
    argv = ["--data_dir_prefix", str(place / "nodata") + "/", *fill(args, place)]
    code = call(create_dataset.main, argv)
    assert_one_line(capsys, code, needle.format(d=place))
    assert created(place) == before


# --- the same through real subprocesses, a few per entry point -----------------------------------


@pytest.mark.parametrize(
    "cwd,script,args,needle",
    [
        ("gym", "experiment.py", ["--out_dir", "{d}/afile", "--data_dir", "{d}/data"], "is a file"),
        ("gym", "experiment_qwen.py", ["--head_dim", "7"], "--head_dim must be even"),
        ("gym", "evaluate.py", ["--checkpoint", "{d}/run", "--video", "{d}/nodir/v.mp4"], "nodir"),
        ("gym", "plot.py", ["{d}/run", "--out", "{d}/c.xyz"], "the figure must end in one of"),
        ("gym", "data/collect_dataset.py", ["--out", "{d}/afile"], "is a file, not a folder"),
        ("atari", "run_dt_atari.py", ["--epochs", "x"], "argument --epochs: invalid int value"),
        ("atari", "create_dataset.py", ["--num_buffers", "x"], "argument --num_buffers: invalid"),
        ("gym", "export.py", ["{d}/norun", "--out", "{d}/m"], "no run folder at"),
        ("gym", "export.py", ["{d}/run", "--out", "{d}/afile"], "is not an empty folder"),
        ("gym", "evaluate_pretrained.py", ["{d}/nomodel"], "no model folder at"),
        ("gym", "push_to_hub.py", ["{d}/nomodel", "me/dt"], "no folder at"),
        ("atari", "export_atari.py", ["{d}/norun", "--out", "{d}/m"], "no run folder at"),
    ],
)
def test_as_users_run_them(place, cwd, script, args, needle):
    proc = run_script(script, *fill(args, place), cwd=ROOT / cwd)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def test_a_folder_another_rank_probes_away_is_judged_by_its_parent(tmp_path, monkeypatch):
    """Ranks check the same --out_dir at once: one rank's probe makes the missing folder and
    removes it again, so another rank can find it, then see it gone. That is no read-only place:
    the folder holding it is judged (a run under torchrun failed here at random)."""
    import os

    from decision_transformer.run import paths

    out = tmp_path / "run"
    out.mkdir()  # made by the other rank's probe; found by this rank's search ...
    real = os.access

    def access(p, mode):
        if Path(p) == out and out.exists():
            out.rmdir()  # ... and removed by that probe before this rank looks at it
        return real(p, mode)

    monkeypatch.setattr(paths.os, "access", access)
    assert paths.check_output_dir(out, "--out_dir") == out
