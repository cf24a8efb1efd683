"""Command-line flags of experiment.py and experiment_qwen.py, in one place, and their checks."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..envs import ENV_SPECS, parse_env_name
from ..errors import UserError
from .errors import HelpFormatter, OneLineParser


def str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def build_parser(qwen: bool = False) -> argparse.ArgumentParser:
    """The original experiment.py flags with their defaults, plus this project's additions; with
    ``qwen=True`` also the Qwen3 backbone flags."""
    p = OneLineParser(
        description=(
            "Train a Decision Transformer with a Qwen3-style backbone (or BC) on offline data."
            if qwen
            else "Train a Decision Transformer (GPT-2 backbone) or BC on an offline dataset."
        ),
        formatter_class=HelpFormatter,
    )
    a = p.add_argument
    a(
        "--env",
        default="hopper",
        help=f"task: {', '.join(ENV_SPECS)}; D4RL-style names such as humanoid-medium-v2 also work "
        "and name the dataset too",
    )
    a(
        "--dataset",
        default=None,
        help="dataset name: file {data_dir}/{env}-{dataset}-v2.pkl (medium, medium-replay, expert, "
        "medium-expert, collected, ...), or minari:<id> to train straight from a Minari dataset "
        "(e.g. minari:mujoco/humanoid/medium-v0); default: the one in --env's name, else medium",
    )
    a(
        "--mode",
        default="normal",
        choices=["normal", "delayed", "noise"],
        help="'delayed' moves each episode's return onto its last reward; 'noise' perturbs the "
        "initial evaluation state",
    )
    a("--K", type=int, default=20, help="context length in timesteps")
    a(
        "--attention",
        default="full",
        choices=["full", "window"],
        help="full: every token sees the whole K-step window (the original); window: each token "
        "sees its own timestep and the K-1 before it, evaluated with a rolling key/value cache",
    )
    a(
        "--segment_len",
        type=int,
        default=None,
        help="timesteps per training segment with --attention window (>= K; default K)",
    )
    a(
        "--pct_traj",
        type=float,
        default=1.0,
        help="train on the best-return episodes making up this fraction of all timesteps",
    )
    a("--batch_size", type=int, default=64, help="trajectory windows per gradient step")
    a(
        "--model_type",
        default="dt",
        choices=["dt", "bc"],
        help="dt: Decision Transformer; bc: MLP behaviour cloning",
    )
    a("--embed_dim", type=int, default=128, help="hidden size")
    a("--n_layer", type=int, default=3, help="transformer blocks")
    a("--n_head", type=int, default=1, help="attention (query) heads")
    a("--activation_function", default="relu", help="GPT-2 MLP activation (relu, gelu_new, ...)")
    a("--dropout", type=float, default=0.1, help="dropout probability, in [0, 1)")
    a("--learning_rate", "-lr", type=float, default=1e-4, help="AdamW peak learning rate")
    a("--weight_decay", "-wd", type=float, default=1e-4, help="AdamW weight decay")
    a("--warmup_steps", type=int, default=10000, help="linear learning-rate warmup steps")
    a(
        "--lr_decay",
        default="none",
        choices=["none", "cosine"],
        help="after warmup: none keeps the learning rate (the original); cosine anneals it to "
        "a tenth by the last step of --max_iters x --num_steps_per_iter",
    )
    a(
        "--num_eval_episodes",
        type=int,
        default=100,
        help="episodes per target return after each iteration; 0 skips evaluation",
    )
    a("--max_iters", type=int, default=10, help="training iterations")
    a("--num_steps_per_iter", type=int, default=10000, help="gradient steps per iteration")
    a("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    a(
        "--log_to_wandb",
        "-w",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="log to Weights & Biases; works bare (-w) or as -w True / -w False (default: off)",
    )
    a("--data_dir", default="data", help="folder holding {env}-{dataset}-v2.pkl files")
    a("--seed", type=int, default=0, help="seeds torch, numpy, sampling and evaluation episodes")
    a(
        "--out_dir",
        default=None,
        help="run directory for config.json, metrics.jsonl and checkpoint.pt "
        "(default: runs/{env}-{dataset}-{model_type}-{backbone}-seed{seed}, backbone being "
        "gpt2, qwen3 or mlp)",
    )
    a(
        "--resume",
        action="store_true",
        help="continue the run in --out_dir from its checkpoint.pt, exactly where it stopped",
    )
    a(
        "--eval_envs",
        type=int,
        default=16,
        help="episodes played at once in a vector env with one batched model call per step; "
        "1 uses the original one-episode evaluator",
    )
    a(
        "--env_targets",
        nargs="+",
        default=None,
        type=target_spec,
        help="returns to condition evaluation on: numbers, or max / pNN (a percentile) of the "
        "dataset's episode returns, e.g. --env_targets max p90 p50 (default: the env's two)",
    )
    a(
        "--compile",
        action="store_true",
        help="torch.compile each transformer block on its own (regional compilation: one "
        "block's compile serves them all, so start-up stays short); BC compiles its whole MLP",
    )
    add_scale_out_flags(p)
    if qwen:
        q = p.add_argument_group("Qwen3 backbone")
        b = q.add_argument
        b(
            "--n_kv_head",
            type=int,
            default=None,
            help="key/value heads for grouped-query attention; must divide --n_head "
            "(default: --n_head, i.e. plain multi-head attention)",
        )
        b("--head_dim", type=int, default=None, help="per-head size (default: embed_dim // n_head)")
        b("--mlp_ratio", type=float, default=4.0, help="SwiGLU intermediate size / embed_dim")
        b(
            "--intermediate_size",
            type=int,
            default=None,
            help="SwiGLU intermediate size; overrides --mlp_ratio (default: from --mlp_ratio)",
        )
        b("--rope_theta", type=float, default=1e6, help="RoPE base")
        b("--no_qk_norm", action="store_true", help="drop the per-head RMSNorm on queries and keys")
        b(
            "--init_backbone",
            default=None,
            metavar="DIR",
            help="start the decoder layers from a local transformers Qwen3 checkpoint directory "
            "(default: random initialisation)",
        )
    return p


def add_scale_out_flags(p: argparse.ArgumentParser) -> None:
    """Precision, memory and several-process flags (every model; see run/distributed.py)."""
    g = p.add_argument_group("precision, memory and several processes (torchrun)")
    a = g.add_argument
    a(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="bf16 computes under torch.autocast (FSDP: bf16 params in compute, fp32 reduce); "
        "weights and AdamW stay fp32. auto: bf16 on CUDA, fp32 on CPU",
    )
    a(
        "--grad_accum_steps",
        type=int,
        default=1,
        help="micro-batches of --batch_size per optimizer step (gradients all-reduced once); "
        "global batch = batch_size x processes x grad_accum_steps",
    )
    a(
        "--activation_checkpointing",
        action="store_true",
        help="recompute each transformer block's activations in backward (less memory, ~1/3 "
        "more compute)",
    )
    a(
        "--fsdp",
        action="store_true",
        help="under torchrun, shard weights, gradients and AdamW states (FSDP2) instead of DDP",
    )
    a(
        "--consolidate_checkpoint",
        type=str2bool,
        default=True,
        help="FSDP: also gather a single-file checkpoint.pt with full weights for evaluate.py "
        "(false for the largest runs: only the sharded dcp-* folder is written)",
    )
    a(
        "--dist_timeout",
        type=float,
        default=60.0,
        help="minutes a rank waits in a collective (rank 0 writing a checkpoint) before failing",
    )


def check_scale_out(cfg: dict) -> None:
    if cfg["dtype"] == "auto":
        cfg["dtype"] = "bf16" if cfg["device"].startswith("cuda") else "fp32"
    if cfg["grad_accum_steps"] <= 0:
        raise ConfigError(f"--grad_accum_steps must be positive, got {cfg['grad_accum_steps']}")
    if cfg["dist_timeout"] <= 0:
        raise ConfigError(f"--dist_timeout must be positive minutes, got {cfg['dist_timeout']}")
    if cfg["activation_checkpointing"] and cfg["model_type"] != "dt":
        raise ConfigError(
            "--activation_checkpointing recomputes transformer blocks; BC (--model_type bc) has "
            "none: drop the flag"
        )


def target_spec(value: str) -> float | str:
    """A target return: a number, ``max``, or ``pNN`` for a percentile of the dataset's returns."""
    if value == "max" or (value[:1] == "p" and value[1:].replace(".", "", 1).isdigit()):
        if value != "max" and not 0 <= float(value[1:]) <= 100:
            raise argparse.ArgumentTypeError(f"percentile out of range: '{value}'")
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, max or pNN (e.g. p90), got '{value}'"
        ) from None


def resolve_targets(specs: list, returns, default: tuple[float, ...]) -> list[float]:
    """Turn target specs into returns, reading ``max``/``pNN`` off the dataset's episode returns."""
    out = []
    for t in specs or default:
        if t == "max":
            t = float(np.max(returns))
        elif isinstance(t, str):
            t = float(np.percentile(returns, float(t[1:])))
        out.append(round(float(t), 1))
    return out


class ConfigError(UserError, ValueError):
    """A bad flag or flag combination, reported before any work starts."""


def resolve(args: argparse.Namespace, backbone: str) -> dict:
    """Validate flags and fill derived ones; returns the run's config (what config.json holds)."""
    cfg = dict(vars(args))
    cfg["backbone"] = backbone if cfg["model_type"] == "dt" else "mlp"
    try:
        env, env_dataset = parse_env_name(cfg["env"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if env_dataset and cfg["dataset"] and cfg["dataset"] != env_dataset:
        raise ConfigError(
            f"--env {cfg['env']} names dataset '{env_dataset}' but --dataset is "
            f"'{cfg['dataset']}': drop one of them or make them agree"
        )
    cfg["env"] = env
    cfg["dataset"] = cfg["dataset"] or env_dataset or "medium"

    for flag in (
        "batch_size",
        "K",
        "max_iters",
        "num_steps_per_iter",
        "embed_dim",
        "n_layer",
        "n_head",
        "eval_envs",
    ):
        if cfg[flag] <= 0:
            raise ConfigError(f"--{flag} must be positive, got {cfg[flag]}")
    for flag in ("num_eval_episodes", "warmup_steps"):
        if cfg[flag] < 0:
            raise ConfigError(f"--{flag} must be >= 0, got {cfg[flag]}")
    if cfg["segment_len"] is None:
        cfg["segment_len"] = cfg["K"]
    if cfg["attention"] == "window" and cfg["model_type"] != "dt":
        raise ConfigError("--attention window is for the DT: drop it for --model_type bc")
    if cfg["segment_len"] < cfg["K"]:
        raise ConfigError(
            f"--segment_len {cfg['segment_len']} is shorter than --K {cfg['K']}: use at least K"
        )
    if cfg["attention"] == "full" and cfg["segment_len"] != cfg["K"]:
        raise ConfigError(
            "--segment_len differs from --K but attention is full: add --attention window "
            "(or drop --segment_len)"
        )
    if not 0 < cfg["pct_traj"] <= 1:
        raise ConfigError(f"--pct_traj must be in (0, 1], got {cfg['pct_traj']}")
    for flag in ("learning_rate", "weight_decay"):
        if not cfg[flag] >= 0 or (flag == "learning_rate" and cfg[flag] == 0):
            bound = "positive" if flag == "learning_rate" else ">= 0"
            raise ConfigError(f"--{flag} must be {bound}, got {cfg[flag]}")
    if not 0 <= cfg["dropout"] < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    if backbone == "qwen3":
        cfg["n_kv_head"] = cfg["n_kv_head"] or cfg["n_head"]
        if cfg["n_head"] % cfg["n_kv_head"]:
            raise ConfigError(
                f"--n_head {cfg['n_head']} is not a multiple of --n_kv_head {cfg['n_kv_head']}: "
                "each key/value head serves a whole group of query heads"
            )
        if cfg["head_dim"] is None and cfg["embed_dim"] % cfg["n_head"]:
            raise ConfigError(
                f"--embed_dim {cfg['embed_dim']} is not divisible by --n_head {cfg['n_head']}: "
                "change one of them or set --head_dim"
            )
    elif cfg["model_type"] == "dt" and cfg["embed_dim"] % cfg["n_head"]:
        raise ConfigError(
            f"--embed_dim {cfg['embed_dim']} is not divisible by --n_head {cfg['n_head']}"
        )

    cfg["device"] = resolve_device(cfg["device"])
    check_scale_out(cfg)
    if cfg["out_dir"] is None:
        name = cfg["dataset"].replace("minari:", "minari-").replace("/", "-")
        cfg["out_dir"] = (
            f"runs/{env}-{name}-{cfg['model_type']}-{cfg['backbone']}-seed{cfg['seed']}"
        )
    return cfg


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} asked for CUDA but none is available: use --device auto"
        )
    return device
