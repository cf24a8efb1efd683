"""run_dt_atari.py as a user runs it (subprocess, real ALE Breakout, real replay files): both
backbones and both model types, the evaluator's cached encodings, kill -9 and --resume
continuing exactly, one process per run folder (batched evaluation: test_atari_eval.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from atari_cli import ATARI_DIR, TINY, run_script
from cli import assert_one_line_error, script_env, small_disk
from decision_transformer.run.checkpoint import load_checkpoint
from decision_transformer.run.paths import PathError, RunDirLock


def run_dt(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_script("run_dt_atari.py", *args, timeout=timeout)


@pytest.mark.parametrize(
    "backbone,model_type,extra",
    [
        ("gpt", "reward_conditioned", ["--num_workers", "2"]),
        ("gpt", "naive", ["--block_size", "12"]),
        ("qwen3", "reward_conditioned", ["--n_kv_head", "1", "--dtype", "bf16"]),
        ("qwen3", "naive", []),
    ],
)
def test_cli_trains_and_evaluates(atari_replay, tmp_path, backbone, model_type, extra):
    out = tmp_path / "run"
    proc = run_dt(
        *TINY, "--data_dir_prefix", atari_replay, "--backbone", backbone, "--model_type",
        model_type, "--epochs", "1", "--steps_per_epoch", "3", "--eval_episodes", "2",
        "--eval_envs", "2", "--eval_max_steps", "25", "--out_dir", out, *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"] == backbone and cfg["context_length"] == 4
    # A single-game run's config is what it was before --games existed (so its resume is too).
    assert cfg["game"] == "Breakout" and not {"games", "game_targets", "game_specs"} & set(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and len(rows[0]["eval/returns"]) == 2
    assert "eval/human_normalized" in rows[0] and rows[0]["step"] == 3
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["trainer"]["epoch"] == 1 and state["trainer"]["global_step"] == 3
    layer = "transformer.layers.0.self_attn.k_proj.weight"
    if backbone == "qwen3":  # the gym package's Qwen3 blocks, with grouped-query attention
        assert state["model"][layer].shape == ((16, 32) if "--n_kv_head" in extra else (32, 32))
    else:
        assert "transformer.h.0.attn.c_attn.weight" in state["model"]


def test_evaluation_encodes_each_stack_once_and_matches_full_windows(atari_replay):
    """The evaluator encodes every frame stack once; its actions equal those of the original's
    way, the whole window (frames included) through the model at every step."""
    from collections import deque

    import numpy as np
    from atari_env import FrameStack, make_env
    from mingpt.evaluate_atari import evaluate
    from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig

    torch.manual_seed(1)
    K, seed, steps, target = 4, 5, 40, 30.0
    model = AtariDecisionTransformer(
        AtariDTConfig(
            n_actions=4, max_timestep=500, context_length=K, n_layer=1, n_head=2, n_embd=32
        )  # fmt: skip
    ).eval()
    with torch.no_grad():  # zero-initialised; random here so that a wrong timestep shows
        model.global_pos_emb.normal_(std=0.5)
        model.pos_emb.normal_(std=0.5)
    encoded = []
    hook = model.state_encoder.register_forward_hook(lambda m, x, out: encoded.append(len(out)))
    trace: list = []
    evaluate(model, "Breakout", target, 1, 1, seed, torch.device("cpu"), steps, trace=trace)
    hook.remove()
    assert sum(encoded) == len(trace) == steps

    env, gen = make_env("Breakout"), torch.Generator().manual_seed(seed)
    frame, _ = env.reset(seed=seed)
    frames = FrameStack(frame)
    states, actions, rtgs = deque(maxlen=K), deque(maxlen=K), deque([target], maxlen=K)
    reference = []
    with torch.no_grad():
        for t in range(steps):
            states.append(frames.get())
            L = len(states)
            past = list(actions)[-(L - 1) :] if L > 1 else []
            logits = model(
                torch.from_numpy(np.stack(states))[None],
                torch.tensor([past + [0]]),  # the last action is masked from the prediction
                torch.tensor(list(rtgs))[None, :, None],
                torch.tensor([[t - L + 1]]),
            )[:, -1]
            a = int(torch.multinomial(logits.float().softmax(-1)[0], 1, generator=gen))
            reference.append((0, t, a))
            frame, r, *_ = env.step(a)
            actions.append(a)
            frames.push(frame)
            rtgs.append(rtgs[-1] - float(r))
    env.close()
    assert trace == reference
    assert len({a for *_, a in trace}) > 1


def test_kill_9_then_resume_continues_exactly(atari_replay, tmp_path):
    args = [*TINY, "--data_dir_prefix", atari_replay, "--epochs", "2", "--steps_per_epoch", "12",
            "--save_every", "2", "--eval_episodes", "0"]  # fmt: skip
    ref = run_dt(*args, "--out_dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "run_dt_atari.py", *map(str, args), "--out_dir", str(out)],
        cwd=ATARI_DIR, env={**script_env(), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(PathError, match=f"in use by pid {proc.pid} on "):
        RunDirLock(out).acquire()  # the training process holds its folder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    mid = load_checkpoint(out / "checkpoint.pt")["trainer"]
    assert (mid["epoch"], mid["step"]) < (2, 0), "the run finished before it was killed"

    # A resume while another process holds the folder (here this one) is refused in one line.
    with RunDirLock(out):
        busy = run_dt(*args, "--out_dir", out, "--resume")
    assert_one_line_error(busy, f"is in use by pid {os.getpid()} on ")
    assert busy.stdout == ""  # refused before it read the replay

    again = run_dt(*args, "--out_dir", out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stdout
    a = load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    b = load_checkpoint(out / "checkpoint.pt")
    assert a["trainer"]["global_step"] == b["trainer"]["global_step"] == 24
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    rows = (out / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if not k.startswith("time/")} for r in rows]
    ref_strip = [
        {k: v for k, v in json.loads(r).items() if not k.startswith("time/")} for r in ref_rows
    ]
    assert strip == ref_strip

    # A changed flag on resume is refused in one line.
    bad = run_dt(*args[:-2], "--eval_episodes", "0", "--batch_size", "8", "--out_dir", out,
                 "--resume")  # fmt: skip
    assert bad.returncode == 2 and "batch_size" in bad.stderr


def test_path_flags_are_refused_before_any_work(tmp_path):
    """--cache_dir naming a file (where the sampled replay would be cached) and an --out_dir
    that cannot be made are refused in one line before the replay is read (there is none)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    missing = tmp_path / "no-replay-here"
    common = [*TINY, "--data_dir_prefix", missing, "--epochs", "1"]
    proc = run_dt(*common, "--cache_dir", a_file, "--out_dir", tmp_path / "run")
    assert_one_line_error(proc, f"--cache_dir {a_file} is a file, not a folder")
    long_name = tmp_path / "parent" / ("x" * 300)
    proc = run_dt(*common, "--out_dir", long_name)
    assert_one_line_error(proc, "cannot create it: File name too long (ENAMETOOLONG)")
    assert not (tmp_path / "run").exists() and not (tmp_path / "parent").exists()


def test_a_full_disk_stops_in_one_line_and_resume_continues(atari_replay, tmp_path):
    """The run folder on a real 3.6 MB filesystem (tmpfs; needs root): the first epoch's
    checkpoint (~2.4 MB) fits, the second's beside it does not. One line names the file, the
    cause and the epoch kept, as the gym half's runs say it; after freeing space --resume
    finishes the run."""
    disk = tmp_path / "disk"
    with small_disk(disk, "3600k") as grow:
        out = disk / "run"
        args = [*TINY, "--data_dir_prefix", atari_replay, "--epochs", "2", "--steps_per_epoch", "2",
                "--eval_episodes", "0", "--out_dir", out]  # fmt: skip
        proc = run_dt(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        # (the trainer's progress bars go to stderr too)
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
        assert proc.stderr.strip().endswith(line)
        ckpt = out / "checkpoint.pt"
        assert line.startswith(f"error: cannot write {ckpt}: No space left on device (ENOSPC)")
        assert f"the last good checkpoint {ckpt} (epoch 1) is kept" in line and "--resume" in line
        assert load_checkpoint(ckpt)["trainer"]["epoch"] == 1
        grow()
        again = run_dt(*args, "--resume")
        assert again.returncode == 0, again.stderr[-3000:]
        assert load_checkpoint(ckpt)["trainer"]["epoch"] == 2
