"""train_humanoid_qwen_dt.py presets (one real process, dry runs through its entry function)
and experiment_qwen.py's sanity command as a subprocess."""

import contextlib
import json
import queue
import re
import threading
import time

from cli import GYM_DIR, run_script, start_script
from rollouts import write_dataset


def dry_run(*args):
    proc = run_script(
        "train_humanoid_qwen_dt.py", "--dry_run", "--device", "cpu", *args, check=True
    )
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def dry_run_here(capsys, *args):
    """dry_run through the script's entry function, in this process (the model is built on the
    meta device either way; only the interpreter start is saved)."""
    import train_humanoid_qwen_dt as preset

    capsys.readouterr()
    assert preset.main(["--dry_run", "--device", "cpu", *args]) == 0
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1])


def test_qwen3_06b_preset_mirrors_the_real_decoder():
    out, info = dry_run()
    assert info["backbone_params"] == 440_467_456
    assert info["total_params"] > info["backbone_params"]  # embeddings and heads come on top
    mem = info["memory_bytes"]
    # fp32 weights + grads + two AdamW moments: 16 bytes per parameter, plus activations.
    assert mem["weights"] == 4 * info["total_params"]
    assert mem["adamw"] == 2 * mem["weights"] and mem["activations"] > 0
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    for line in (
        "n_layer: 28",
        "n_head: 16",
        "n_kv_head: 8",
        "head_dim: 128",
        "intermediate_size: 3072",
        "rope_theta: 1000000.0",
    ):
        assert line in out
    # Only fields describing the preset: no GPT-2 activation, no mlp_ratio that
    # intermediate_size overrides.
    assert "activation_function" not in out and "mlp_ratio" not in out


def test_2048x24_preset_is_about_1_93_billion(capsys):
    out, info = dry_run_here(capsys, "--preset", "2048x24")
    assert info["backbone_params"] == 1_925_292_032
    # 5.4 x 2048 = 11059 rounded to a multiple of 256, printed as the real width; the preset
    # fixes the width, so no mlp_ratio is shown beside it.
    assert "intermediate_size: 11008" in out and "mlp_ratio" not in out


def test_flags_override_the_preset_and_bf16_shrinks_activations(capsys):
    _, small = dry_run_here(capsys, "--n_layer", "2")
    assert small["backbone_params"] == 2 * 15_730_944 + 1024  # two Qwen3-0.6B layers + final norm
    _, bf16 = dry_run_here(capsys, "--n_layer", "2", "--dtype", "bf16")
    assert bf16["memory_bytes"]["activations"] < small["memory_bytes"]["activations"]


def test_compiled_by_default_on_cuda_only(monkeypatch, capsys):
    """The GPU preset compiles its blocks on CUDA devices inductor serves (fewer launches a
    step); on the CPU, old GPUs or without Triton it stays eager; the flag decides either way."""
    import importlib.util

    import torch
    import train_humanoid_qwen_dt as preset

    out, _ = dry_run_here(capsys)
    assert "compile: False" in out.splitlines()  # this machine: CPU only
    assert "compile: True" in dry_run_here(capsys, "--compile")[0].splitlines()
    assert "compile: False" in dry_run_here(capsys, "--compile", "false")[0].splitlines()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: n == "triton" or real_find_spec(n)
    )
    assert preset.compile_by_default()
    assert preset.parse([]).compile and not preset.parse(["--compile", "false"]).compile
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert not preset.compile_by_default()  # Pascal: no Triton kernels
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "triton" else 1)
    assert not preset.compile_by_default()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not preset.parse([]).compile


def test_bad_head_counts_fail_fast():
    proc = run_script("train_humanoid_qwen_dt.py", "--dry_run", "--n_kv_head", "5")
    assert proc.returncode == 2 and "--n_kv_head 5" in proc.stderr


def test_sanity_command_runs_verbatim(tmp_path):
    """The seed's command, word for word, starts training on data/humanoid-medium-v2.pkl. It is
    run from a scratch folder laid out like gym/ so the checkout stays clean, and stopped once
    it has built the model and written its run config (a step of this ~100M-parameter model
    takes up to a minute on a busy CPU). Output is read by a thread, so a silent child cannot
    block the test."""
    write_dataset(tmp_path / "data", "humanoid", "medium", episodes=4, max_steps=60)
    command = (
        "--env humanoid-medium-v2 --dataset medium --embed_dim 768 --n_layer 12 --n_head 12 "
        "--n_kv_head 4 --mlp_ratio 4.0 --batch_size 64 --K 20 --max_iters 2 "
        "--num_steps_per_iter 1000"
    ).split()
    proc = start_script(str(GYM_DIR / "experiment_qwen.py"), *command, cwd=tmp_path)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    config = tmp_path / "runs/humanoid-medium-dt-qwen3-seed0/config.json"
    seen = ""
    try:
        deadline = time.time() + 180
        while "parameters" not in seen or not config.is_file():
            assert proc.poll() is None or not lines.empty(), f"exited {proc.returncode}: {seen}"
            assert time.time() < deadline, "no model or config in 180 s: " + seen
            with contextlib.suppress(queue.Empty):
                seen += lines.get(timeout=0.5)
        time.sleep(1)  # config.json is written in one call; let it finish
        assert proc.poll() is None, "training stopped: " + seen
    finally:
        proc.kill()
        proc.wait()
    # What it printed: the dataset it read, the model it built.
    assert "Starting new experiment: humanoid medium" in seen
    assert re.search(r"^4 trajectories, \d+ timesteps found", seen, re.M), seen
    found = re.search(r"DecisionTransformerQwen3, ([0-9,]+) parameters", seen)
    params = int(found[1].replace(",", ""))
    # What it wrote: the run's config, with the command's flags and the model it counted.
    cfg = json.loads(config.read_text())
    assert cfg["params"] == params and 100e6 < params < 110e6
    expect = dict(embed_dim=768, n_layer=12, n_head=12, n_kv_head=4, mlp_ratio=4.0, K=20)
    assert {k: cfg[k] for k in expect} == expect
    assert cfg["batch_size"] == 64 and cfg["max_iters"] == 2 and cfg["num_steps_per_iter"] == 1000
    assert cfg["dataset"] == "medium" and cfg["env"] == "humanoid"
