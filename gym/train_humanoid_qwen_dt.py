"""The large Qwen3 Decision Transformer for Humanoid, as named presets; every flag overridable.

    python train_humanoid_qwen_dt.py                          # qwen3-0.6b preset, humanoid medium
    python train_humanoid_qwen_dt.py --preset 2048x24 --dry_run
    python train_humanoid_qwen_dt.py --dataset expert --batch_size 32 --n_layer 14
    python train_humanoid_qwen_dt.py --preset 2048x24 --tasks humanoid:medium hopper:ars-100k \
        walker2d:ars-100k ant:ars-100k --dry_run          # one backbone over several bodies

Presets (backbone parameters, counted):
  qwen3-0.6b  Qwen3-0.6B's decoder: hidden 1024, 28 layers, 16 query / 8 KV heads, head_dim 128,
              SwiGLU 3072, rope_theta 1e6, eps 1e-6, QK-norm: 440,467,456 parameters. (The "0.6B"
              of the language model counts its 151,936 x 1024 token embedding, which a DT has no
              use for.)
  2048x24     hidden 2048, 24 layers, 16 query / 8 KV heads, SwiGLU 11008 (mlp_ratio 5.4 rounded
              to a multiple of 256): 1,925,292,032 parameters. It is often called "0.6B"; it is not.

On CUDA the blocks are compiled by default (``--compile``, regional: one compile serves every
layer): an eager step of these models launches about twice the kernels of a compiled one, and at
the qwen3-0.6b size a step's matmuls are short enough on an H100 for launches to matter (counts
in benchmarks/README.md, bench_gpu.py). ``--compile false`` trains eagerly. On the CPU it stays
off (its compile needs a C compiler and takes minutes).

``--dry_run`` prints the resolved config and, as its last line, a JSON object with the parameter
counts and the estimated training and evaluation memory, then exits without loading data or
training. With ``--tasks`` (the presets' backbone over several bodies instead of Humanoid alone,
as experiment_qwen.py --tasks trains it) the counts and memory are the multi-task model's: every
task's own embeddings and heads are counted (and listed per task) beside the shared backbone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import torch
from decision_transformer.envs import make_env
from decision_transformer.models.factory import build_model, build_multitask_model, count_params
from decision_transformer.models.memory import (
    estimate_evaluation_memory,
    estimate_training_memory,
)
from decision_transformer.run.cli import run_cli
from decision_transformer.run.config import (
    ConfigError,
    RunConfig,
    build_parser,
    resolve,
    task_name,
    task_shapes,
)
from decision_transformer.run.experiment import run

PRESETS: dict[str, dict] = {
    "qwen3-0.6b": dict(
        embed_dim=1024,
        n_layer=28,
        n_head=16,
        n_kv_head=8,
        head_dim=128,
        intermediate_size=3072,
        rope_theta=1e6,
    ),
    "2048x24": dict(
        embed_dim=2048,
        n_layer=24,
        n_head=16,
        n_kv_head=8,
        head_dim=None,
        # 5.4 x 2048 = 11059.2, rounded to a multiple of 256 so the MLP matmuls tile evenly on
        # tensor cores: down to 11008 (43 x 256), the nearest one and LLaMA-7B's width.
        intermediate_size=11008,
        rope_theta=1e6,
    ),
}
# Humanoid training defaults shared by the presets; the original's optimiser settings.
HUMANOID = dict(
    env="humanoid",
    dataset="medium",
    K=20,
    batch_size=64,
    num_eval_episodes=20,
    max_iters=10,
    num_steps_per_iter=10000,
)


def compile_by_default() -> bool:
    """Compile on CUDA devices inductor generates kernels for (Triton, compute capability 7.0
    or later); elsewhere eager, as before."""
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.get_device_capability() >= (7, 0)


def parse(argv: list[str] | None):
    parser = build_parser(qwen=True)
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument(
        "--preset",
        default="qwen3-0.6b",
        choices=sorted(PRESETS),
        help="backbone size; any backbone flag given as well overrides it",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="print config, parameter counts and per-GPU memory estimate, then exit",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="--dry_run: processes to estimate for (default: WORLD_SIZE under torchrun, else 1)",
    )
    known = parser.parse_known_args(argv)[0]
    preset = known.preset
    # With --tasks the tasks name the envs and datasets: Humanoid's are not defaults then.
    training = {k: v for k, v in HUMANOID.items() if not known.tasks or k not in ("env", "dataset")}
    # bf16 autocast pays on GPUs (and on CPUs with bf16 units; pass --dtype bf16 there).
    parser.set_defaults(
        **training,
        **PRESETS[preset],
        dtype="bf16" if torch.cuda.is_available() else "fp32",
        compile=compile_by_default(),
    )
    return parser.parse_args(argv)


def preset_fields(cfg: RunConfig) -> dict:
    """The resolved fields that describe the run a preset makes: its backbone shape (the
    SwiGLU width as given, intermediate_size or mlp_ratio, not both) and training set-up;
    flags the Qwen3 backbone ignores (activation_function) are left out."""
    flat = cfg.to_dict()
    keys = ["preset", *(["tasks", "task_sampling"] if cfg.tasks else ["env", "dataset"])]
    keys += ["embed_dim", "n_layer", "n_head", "n_kv_head"]
    keys += ["head_dim", "intermediate_size" if flat["intermediate_size"] else "mlp_ratio"]
    keys += ["rope_theta", "no_qk_norm", "dropout", "dtype", "compile", "K", "batch_size"]
    keys += ["learning_rate", "weight_decay", "warmup_steps", "lr_decay", "max_iters"]
    keys += ["num_steps_per_iter", "num_eval_episodes", "device", "out_dir"]
    fields = {k: flat[k] for k in keys}
    if fields["head_dim"] is None:
        fields["head_dim"] = cfg.embed_dim // cfg.n_head
    return fields


def meta_model(cfg: RunConfig) -> torch.nn.Module:
    """The run's model, shapes only (counts without allocating gigabytes): the multi-task one
    over ``cfg.tasks``, else the single-task DT for ``cfg.env``."""
    if cfg.tasks:
        shapes = task_shapes(cfg.tasks)
        with torch.device("meta"):
            return build_multitask_model(cfg.model_config(), shapes)
    env = make_env(cfg.env)
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    with torch.device("meta"):
        return build_model(
            cfg.model_config(), state_dim, act_dim, env.spec.max_episode_steps, low, high
        )


def task_params(cfg: RunConfig, model: torch.nn.Module) -> dict[str, int]:
    """Each task's own parameters (embeddings and heads) of a multi-task model; {} otherwise."""
    if not cfg.tasks:
        return {}
    return {
        task_name(t): sum(p.numel() for p in parts.parameters())
        for t, parts in zip(cfg.tasks, model.tasks)
    }


def dry_run(cfg: RunConfig, nproc: int | None) -> None:
    model = meta_model(cfg)
    total, backbone = count_params(model)
    per_task = task_params(cfg, model)
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    world = nproc or int(os.environ.get("WORLD_SIZE", "1"))
    memory = estimate_training_memory(
        model.transformer.config,
        cfg.batch_size,  # per process and micro-step: accumulation repeats it
        3 * cfg.segment_len,  # tokens per training segment
        dtype,
        n_extra_params=total - backbone,
        world_size=world,
        fsdp=cfg.fsdp,
        activation_checkpointing=cfg.activation_checkpointing,
    )
    evaluation = estimate_evaluation_memory(
        model.transformer.config,
        cfg.eval_envs,  # rows each rank steps at once
        cfg.K,
        dtype,
        n_extra_params=total - backbone,
        world_size=world,
        fsdp=cfg.fsdp,
    )
    for k, v in preset_fields(cfg).items():
        print(f"{k}: {v}")
    print(f"backbone parameters: {backbone:,}; total: {total:,}")
    if per_task:
        shown = ", ".join(f"{name} {n:,}" for name, n in per_task.items())
        print(f"each task's own parameters (embeddings and heads, in the total): {shown}")
    mode = "FSDP" if cfg.fsdp and world > 1 else "DDP" if world > 1 else "1 process"
    extras = ", activation checkpointing" if cfg.activation_checkpointing else ""
    print(
        f"estimated training memory per GPU: {memory['total'] / 2**30:.2f} GiB "
        f"(micro-batch {cfg.batch_size}, K {cfg.K}, {cfg.dtype}, {world} x {mode}"
        f"{extras}; global batch {cfg.batch_size * world * cfg.grad_accum_steps})"
    )
    print(
        f"estimated evaluation peak per GPU: {evaluation['total'] / 2**30:.2f} GiB "
        f"({cfg.eval_envs} episodes at once per process, the training state still resident)"
    )
    print(
        json.dumps(
            {
                "preset": cfg.extra["preset"],
                "backbone_params": backbone,
                "total_params": total,
                "task_params": per_task,
                "world_size": world,
                "memory_bytes": memory,
                "evaluation_memory_bytes": evaluation,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sys.stdout.reconfigure(line_buffering=True)
    return run_cli(train, args)


def train(args) -> int:
    cfg = resolve(args, "qwen3")
    if cfg.model_type != "dt":
        raise ConfigError("train_humanoid_qwen_dt.py trains the Qwen3 DT: drop --model_type")
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be positive, got {args.nproc}")
    if args.dry_run:
        dry_run(cfg, args.nproc)
        return 0
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
