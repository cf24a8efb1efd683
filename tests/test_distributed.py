"""Several processes (torchrun, gloo on CPU): DDP and FSDP2 against one process, accumulation,
kill -9 and resume, a NaN on one rank, split evaluation, activation checkpointing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli import GYM_DIR, TINY, run_script, script_env
from decision_transformer.run import evaluate_checkpoint
from rollouts import write_dataset

# Exact-comparison runs: no dropout (ranks' dropout noise differs from one process's), a learning
# rate and warmup that move weights by ~1e-4 per step (AdamW), well above the 1e-5 tolerance.
EXACT = ["--dropout", "0", "--learning_rate", "1e-4", "--warmup_steps", "1"]
NO_EVAL = ["--num_eval_episodes", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=12, seed=0)
    return d


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
    """The shared reference: one process, batch 16 (the union of 2 ranks x 8), one iteration,
    exact flags; run once per model type for every test that compares with it."""
    runs = {}

    def get(model_type: str = "dt", *extra: str):
        key = (model_type, *extra)
        if key not in runs:
            out = tmp_path_factory.mktemp(f"one-{model_type}") / "run"
            flags = [*EXACT, *NO_EVAL, "--model_type", model_type, "--max_iters", "1", *extra]
            train(data_dir, out, *flags, "--batch_size", "16")
            runs[key] = out
        return runs[key]

    return get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_args(nproc: int, script: str = "experiment.py") -> list[str]:
    return [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        script,
    ]


def train(data_dir, out, *args, nproc: int = 1, script: str = "experiment.py", check=True):
    launch = torchrun_args(nproc, script) if nproc > 1 else [script]
    common = ["--env", "humanoid", "--data_dir", data_dir, "--out_dir", out, *TINY]
    return run_script(*launch, *common, *args, check=check, timeout=300)


def weights(out) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("model_type", ["dt", "bc"])
def test_ddp_equals_one_process_on_the_union(data_dir, tmp_path, one_process, model_type):
    """2 ranks x batch 8 == 1 process x batch 16 on the same windows; rank 0 alone differs."""
    flags = [*EXACT, *NO_EVAL, "--model_type", model_type, "--max_iters", "1"]
    proc = train(data_dir, tmp_path / "ddp", *flags, "--batch_size", "8", nproc=2)
    assert "global batch: 16 windows per optimizer step (batch_size 8 x 2 processes" in proc.stdout
    train(data_dir, tmp_path / "half", *flags, "--batch_size", "8")
    ddp, one, half = (
        weights(p) for p in (tmp_path / "ddp", one_process(model_type), tmp_path / "half")
    )
    assert max_diff(ddp, one) < 1e-5
    # Unwrapped ranks (or ranks drawing the same windows) would train on half the batch.
    assert max_diff(half, one) > 1e-4
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["training/global_batch_size"] == 16


EXIT_THREADS = """\
import atexit, os, pathlib, runpy, sys
def report():
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{t}/comm").read().strip())
        except FileNotFoundError:  # the thread ended after it was listed
            pass
    rank = os.environ["RANK"]
    pathlib.Path(__file__).with_name(f"threads-{rank}.txt").write_text(" ".join(sorted(names)))
atexit.register(report)
sys.path.insert(0, os.getcwd())
sys.argv[0] = "experiment.py"
runpy.run_path("experiment.py", run_name="__main__")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_process_group_is_gone_before_the_interpreter_exits(data_dir, tmp_path, wrap):
    """A gloo group alive at interpreter exit is torn down with the interpreter, which aborts
    a rank now and then (exit -6 after a finished run). Each rank's native threads are listed
    at exit, after destroy_process_group: gloo's must be gone."""
    driver = tmp_path / "exit_threads.py"
    driver.write_text(EXIT_THREADS)
    model = ["--model_type", "bc"] if wrap == "ddp" else ["--model_type", "dt", "--fsdp"]
    flags = [*NO_EVAL, *model, "--max_iters", "1", "--batch_size", "8"]
    train(data_dir, tmp_path / "run", *flags, nproc=2, script=str(driver))
    for rank in (0, 1):
        threads = (tmp_path / f"threads-{rank}.txt").read_text().split()
        assert threads and not any("gloo" in t for t in threads), (rank, threads)


@pytest.mark.parametrize("head", [[], ["--return_bins", "8"]], ids=["plain", "return_head"])
def test_ddp_grad_accumulation_equals_twice_the_batch(data_dir, tmp_path, one_process, head):
    """2 ranks x 2 micro-batches of 4 == 1 process with a batch of 16 (padding differs per
    micro-batch, so this also checks the token weighting of the masked mean); with the return
    head, its cross-entropy is weighted the same way, and its logged value is the union's."""
    flags = [*EXACT, *NO_EVAL, "--max_iters", "1", *head]
    proc = train(
        data_dir, tmp_path / "acc", *flags, "--batch_size", "4", "--grad_accum_steps", "2", nproc=2
    )
    assert "global batch: 16" in proc.stdout
    one = one_process("dt", *head)
    assert max_diff(weights(tmp_path / "acc"), weights(one)) < 1e-5
    if head:
        runs = (tmp_path / "acc", one)
        got, want = (json.loads((p / "metrics.jsonl").read_text().splitlines()[-1]) for p in runs)
        for key in ("training/return_ce", "training/action_error", "training/train_loss_mean"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key


# FSDP (resume by weights and losses, its evaluation, --consolidate_checkpoint false, a mode
# change, one process continuing its run) and DDP killed inside an iteration: see
# tests/test_promises_distributed.py.


def test_nan_on_one_rank_stops_both_at_the_same_step(data_dir, tmp_path):
    out = tmp_path / "nan"
    # tests/nan_at.py poisons rank 1's batch at optimizer step 7 (iteration 2).
    launch = [*torchrun_args(2, str(Path(__file__).resolve().parent / "nan_at.py")), "1:7"]
    env = script_env()
    args = ["--env", "humanoid", "--data_dir", str(data_dir), "--out_dir", str(out), *TINY]
    # The timeout is the bound: a rank waiting in an all-reduce would hang until it.
    proc = subprocess.run(
        [sys.executable, *launch, *args, *NO_EVAL, "--max_iters", "3"],
        cwd=GYM_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    # Both ranks stop with the same message at global step 8 (the 3rd of iteration 2, counted
    # from 1; the hook's 7 counts from 0); iteration 1 is kept. (Counted in the text, not by
    # lines: two processes writing at once can land on one line.)
    message = "error: training diverged in iteration 2: step 8 not applied: loss nan"
    assert proc.stderr.count(message) == 2, proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1


def test_split_evaluation_equals_rank0_evaluation(data_dir, tmp_path):
    """Training's evaluation, split over 2 ranks, gives evaluate.py's one-process returns."""
    out = tmp_path / "ev"
    flags = ["--max_iters", "1", "--num_eval_episodes", "4", "--eval_envs", "2"]
    train(data_dir, out, *flags, nproc=2)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # evaluate.py's entry function, in this process (its real-process runs: test_results_tools).
    assert evaluate_checkpoint.main(["--checkpoint", str(out / "checkpoint.pt")]) == 0
    report = json.loads((out / "eval.json").read_text())
    for res in report["targets"]:
        key = f"evaluation/target_{res['target']:g}"
        for stat in ("return_mean", "return_std", "length_mean", "length_std"):
            # torchrun gives each rank one thread, this process has OMP_NUM_THREADS's (1 unless
            # set); with more, some CPUs' kernels sum in another order (~1e-8 relative on EPYC).
            assert row[f"{key}_{stat}"] == pytest.approx(res[stat], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_activation_checkpointing_gives_the_same_gradients(backbone):
    from decision_transformer.models.factory import build_model
    from decision_transformer.run.config import build_parser, resolve
    from decision_transformer.run.distributed import apply_activation_checkpointing

    qwen = backbone == "qwen3"
    args = build_parser(qwen=qwen).parse_args(
        ["--embed_dim", "32", "--n_layer", "2", "--n_head", "2", "--K", "6", "--dropout", "0.1"]
    )
    cfg = resolve(args, backbone)
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model_config(), 5, 3, 100, -1.0, 1.0)
        if checkpointed:
            assert apply_activation_checkpointing(model) == 2
        g = torch.Generator().manual_seed(1)
        states, actions = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 3, generator=g)
        rtg, timesteps = torch.randn(4, 6, 1, generator=g), torch.randint(0, 100, (4, 6))
        mask = torch.ones(4, 6)
        mask[0, :2] = 0
        torch.manual_seed(2)  # the same dropout noise, which checkpointing must replay
        _, a, _ = model(states, actions, None, rtg, timesteps, attention_mask=mask)
        (a - actions).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert max_diff(*grads) < 1e-6


def test_any_cuda_device_maps_to_the_local_rank():
    from decision_transformer.run.distributed import DistContext

    ctx = DistContext(rank=5, world_size=8, local_rank=1)
    assert [ctx.device(d) for d in ("cuda", "cuda:0", "cuda:3", "cpu")] == [
        "cuda:1",
        "cuda:1",
        "cuda:1",
        "cpu",
    ]
    assert DistContext().device("cuda:0") == "cuda:0"  # a world of one keeps what was asked
    assert DistContext(0, 3).share(list(range(7))) == [0, 1]
    assert DistContext(2, 3).share(list(range(7))) == [4, 5, 6]


def test_memory_estimate_scales_with_fsdp_and_activation_checkpointing():
    from decision_transformer.models.memory import estimate_training_memory
    from decision_transformer.models.qwen3_transformer import Qwen3Config

    cfg = Qwen3Config(embed_dim=256, n_layer=4, n_head=4, n_kv_head=2, dropout=0.0)
    one = estimate_training_memory(cfg, 16, 60)
    ddp = estimate_training_memory(cfg, 16, 60, world_size=8)
    fsdp = estimate_training_memory(cfg, 16, 60, world_size=8, fsdp=True)
    ckpt = estimate_training_memory(cfg, 16, 60, activation_checkpointing=True)
    assert ddp == one  # DDP replicates everything
    assert fsdp["weights"] * 8 >= one["weights"] > (fsdp["weights"] - 1) * 8
    assert fsdp["adamw"] == 2 * fsdp["weights"] and fsdp["gathered"] > 0
    assert ckpt["activations"] < one["activations"] / 2 and ckpt["weights"] == one["weights"]
    for m in (one, fsdp, ckpt):
        assert m["total"] == sum(v for k, v in m.items() if k != "total")


def test_bad_scale_out_flags_fail_fast(tmp_path, capsys):
    from decision_transformer.run.experiment import main

    for flags, needle in (
        (["--grad_accum_steps", "0"], "--grad_accum_steps must be positive"),
        (["--model_type", "bc", "--activation_checkpointing"], "BC (--model_type bc) has none"),
    ):
        code = main(["--out_dir", str(tmp_path / "x"), *TINY, *flags])
        err = capsys.readouterr().err
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err


@pytest.mark.parametrize("qwen", [False, True])
def test_dtype_flag_for_every_model(qwen):
    from decision_transformer.run.config import build_parser, resolve

    backbone = "qwen3" if qwen else "gpt2"
    for model_type in ("dt", "bc"):
        base = ["--model_type", model_type, "--device", "cpu"]
        args = build_parser(qwen=qwen).parse_args(base)
        assert resolve(args, backbone).dtype == "fp32"  # auto on CPU
        args = build_parser(qwen=qwen).parse_args([*base, "--dtype", "bf16"])
        assert resolve(args, backbone).dtype == "bf16"
