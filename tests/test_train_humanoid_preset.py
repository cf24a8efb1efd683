"""train_humanoid_qwen_dt.py presets and experiment_qwen.py's sanity command, as subprocesses."""

import json
import time

from cli import GYM_DIR, run_script, start_script
from rollouts import write_dataset


def dry_run(*args):
    proc = run_script(
        "train_humanoid_qwen_dt.py", "--dry_run", "--device", "cpu", *args, check=True
    )
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


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


def test_2048x24_preset_is_about_1_93_billion():
    out, info = dry_run("--preset", "2048x24")
    assert info["backbone_params"] == 1_925_292_032
    # 5.4 x 2048 = 11059 rounded to a multiple of 256, printed as the real width.
    assert "intermediate_size: 11008" in out


def test_flags_override_the_preset_and_bf16_shrinks_activations():
    _, small = dry_run("--n_layer", "2")
    assert small["backbone_params"] == 2 * 15_730_944 + 1024  # two Qwen3-0.6B layers + final norm
    _, bf16 = dry_run("--n_layer", "2", "--dtype", "bf16")
    assert bf16["memory_bytes"]["activations"] < small["memory_bytes"]["activations"]


def test_bad_head_counts_fail_fast():
    proc = run_script("train_humanoid_qwen_dt.py", "--dry_run", "--n_kv_head", "5")
    assert proc.returncode == 2 and "--n_kv_head 5" in proc.stderr


def test_sanity_command_runs_verbatim(tmp_path):
    """The seed's command, word for word, starts training on data/humanoid-medium-v2.pkl. It is
    run from a scratch folder laid out like gym/ so the checkout stays clean, and stopped once
    training is under way (its 2000 steps of an 85M-parameter model take long on a CPU)."""
    write_dataset(tmp_path / "data", "humanoid", "medium", episodes=4, max_steps=60)
    command = (
        "--env humanoid-medium-v2 --dataset medium --embed_dim 768 --n_layer 12 --n_head 12 "
        "--n_kv_head 4 --mlp_ratio 4.0 --batch_size 64 --K 20 --max_iters 2 "
        "--num_steps_per_iter 1000"
    ).split()
    proc = start_script(str(GYM_DIR / "experiment_qwen.py"), *command, cwd=tmp_path)
    try:
        deadline = time.time() + 180
        seen = ""
        while "parameters" not in seen:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"exited {proc.returncode}: {seen}"
            seen += line
            assert time.time() < deadline, seen
        assert "DecisionTransformerQwen3" in seen and "Starting new experiment" in seen
        time.sleep(5)
        assert proc.poll() is None, "training stopped: " + seen + proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
