"""Train the Decision Transformer (or BC with --model_type naive) on DQN-Replay Atari data.

    python run_dt_atari.py --seed 123 --context_length 30 --epochs 5 \
        --model_type reward_conditioned --num_steps 500000 --num_buffers 50 --game Breakout \
        --batch_size 128 --data_dir_prefix ./dqn_replay/ [--backbone qwen3]

The original's flags and defaults, plus the backbone, evaluation and run-directory flags. After
each epoch the model plays ``--eval_episodes`` games at ``--target_return``; the run directory
holds config.json, metrics.jsonl and an atomic checkpoint.pt that ``--resume`` continues exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import _paths  # noqa: F401
import numpy as np
import torch
from atari_env import PAPER_TARGETS, check_game, human_normalized
from create_dataset import create_dataset
from decision_transformer.errors import DatasetError, UserError
from decision_transformer.models.qwen3_transformer import Qwen3Config
from decision_transformer.run.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from decision_transformer.run.config import ConfigError, resolve_device
from decision_transformer.run.errors import OneLineParser, report
from decision_transformer.run.metrics import MetricsLog
from decision_transformer.run.paths import check_output_dir
from mingpt.evaluate_atari import evaluate
from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig
from mingpt.trainer_atari import Trainer, TrainerConfig, WindowDataset

# Flags that may change on --resume (everything else must match the run's config.json).
RESUME_FREE = {"resume", "out_dir", "device", "num_workers", "log_to_wandb", "eval_envs"}
DERIVED = {"eval_target"}  # filled in from the data, not a flag


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--seed", type=int, default=123)
    a("--context_length", type=int, default=30, help="steps per window (3 tokens each)")
    a("--block_size", type=int, default=None, help="tokens per window: 3 x --context_length")
    a("--epochs", type=int, default=5)
    a("--model_type", default="reward_conditioned", choices=["reward_conditioned", "naive"])
    a("--num_steps", type=int, default=500_000, help="transitions to sample")
    a("--num_buffers", type=int, default=50)
    a("--game", default="Breakout")
    a("--batch_size", type=int, default=128)
    a("--trajectories_per_buffer", type=int, default=10, help="trajectories per buffer visit")
    a("--data_dir_prefix", default="./dqn_replay/")
    a("--no_cache", action="store_true", help="resample instead of reading the cached sample")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="gpt", choices=["gpt", "qwen3"])
    m.add_argument("--n_layer", type=int, default=6)
    m.add_argument("--n_head", type=int, default=8)
    m.add_argument("--embed_dim", type=int, default=128)
    m.add_argument("--dropout", type=float, default=0.1)
    m.add_argument("--learning_rate", type=float, default=6e-4)
    m.add_argument("--weight_decay", type=float, default=0.1)
    q = p.add_argument_group("Qwen3 backbone (as gym/experiment_qwen.py)")
    q.add_argument("--n_kv_head", type=int, default=None, help="default: --n_head")
    q.add_argument("--head_dim", type=int, default=None, help="default: embed_dim // n_head")
    q.add_argument("--mlp_ratio", type=float, default=4.0)
    q.add_argument("--intermediate_size", type=int, default=None)
    q.add_argument("--rope_theta", type=float, default=1e6)
    q.add_argument("--no_qk_norm", action="store_true")
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--target_return",
        type=float,
        default=None,
        help="return to condition on (default: the paper's: "
        + ", ".join(f"{g} {t}" for g, t in PAPER_TARGETS.items())
        + "; else the best sampled trajectory's)",
    )
    e.add_argument("--eval_episodes", type=int, default=10)
    e.add_argument("--eval_envs", type=int, default=10, help="environments played at once")
    e.add_argument("--eval_max_steps", type=int, default=None, help="cap on agent steps")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    r.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    r.add_argument("--out_dir", default=None, help="default runs/<game>-<model>-<backbone>-s<seed>")
    r.add_argument("--resume", action="store_true", help="continue the run in --out_dir")
    r.add_argument("-w", "--log_to_wandb", action="store_true")
    r.add_argument("--num_workers", type=int, default=4, help="DataLoader workers")
    r.add_argument("--steps_per_epoch", type=int, default=None, help="cap on steps per epoch")
    r.add_argument("--save_every", type=int, default=500, help="checkpoint every N steps too")
    return p


def resolve(args: argparse.Namespace) -> dict:
    cfg = dict(vars(args))
    if cfg["block_size"] is not None:
        if cfg["block_size"] % 3 or cfg["block_size"] < 3:
            raise ConfigError(f"--block_size is 3 tokens per step; {cfg['block_size']} is not")
        cfg["context_length"] = cfg["block_size"] // 3
    cfg["block_size"] = 3 * cfg["context_length"]
    for flag in ("context_length", "epochs", "batch_size", "eval_envs", "save_every"):
        if cfg[flag] < 1:
            raise ConfigError(f"--{flag} must be positive, got {cfg[flag]}")
    for flag in ("eval_max_steps", "steps_per_epoch"):
        if cfg[flag] is not None and cfg[flag] < 1:
            raise ConfigError(f"--{flag} must be positive, got {cfg[flag]}")
    if cfg["eval_episodes"] < 0 or cfg["num_workers"] < 0 or cfg["seed"] < 0:
        raise ConfigError("--eval_episodes, --num_workers and --seed must not be negative")
    if not 0 < cfg["learning_rate"] < math.inf or not 0 <= cfg["weight_decay"] < math.inf:
        raise ConfigError("--learning_rate must be positive and --weight_decay >= 0, both finite")
    if not 0 <= cfg["dropout"] < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    if cfg["target_return"] is not None and not math.isfinite(cfg["target_return"]):
        raise ConfigError(f"--target_return must be a number, got {cfg['target_return']}")
    if not 0 < cfg["rope_theta"] < math.inf:
        raise ConfigError(f"--rope_theta must be positive, got {cfg['rope_theta']}")
    cfg["device"] = resolve_device(cfg["device"])
    # Backbone shapes are checked here, before any data is read.
    if cfg["backbone"] == "qwen3":
        try:
            Qwen3Config(
                embed_dim=cfg["embed_dim"],
                n_layer=cfg["n_layer"],
                n_head=cfg["n_head"],
                n_kv_head=cfg["n_kv_head"] or cfg["n_head"],
                head_dim=cfg["head_dim"],
                intermediate_size=cfg["intermediate_size"],
                mlp_ratio=cfg["mlp_ratio"],
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cfg["n_layer"] < 1 or cfg["n_head"] < 1 or cfg["embed_dim"] % cfg["n_head"]:
        raise ConfigError(
            f"--embed_dim ({cfg['embed_dim']}) must be a multiple of --n_head ({cfg['n_head']}), "
            "both positive, and --n_layer positive"
        )
    if cfg["out_dir"] is None:
        cfg["out_dir"] = f"runs/{cfg['game']}-{cfg['model_type']}-{cfg['backbone']}-s{cfg['seed']}"
    check_output_dir(cfg["out_dir"], "--out_dir")
    # For gym's MetricsLog (wandb group name).
    cfg["env"], cfg["dataset"] = cfg["game"], "dqn-replay"
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(resolve(args))
    except UserError as e:
        return report(e)


def run(cfg: dict) -> int:
    out = Path(cfg["out_dir"])
    ckpt_path = out / "checkpoint.pt"
    state = None
    if cfg["resume"]:
        if not ckpt_path.is_file():
            raise ConfigError(f"--resume: no {ckpt_path}; start the run without --resume")
        state = load_checkpoint(ckpt_path)
        saved = state["config"]
        changed = [k for k in saved if k not in RESUME_FREE | DERIVED and saved[k] != cfg.get(k)]
        if changed:
            raise ConfigError(
                "--resume with changed flags: "
                + ", ".join(f"{k} {saved[k]} -> {cfg.get(k)}" for k in changed)
            )
    elif ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume or another --out_dir")
    n_actions = check_game(cfg["game"])  # a game without a ROM fails before reading data

    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    np_rng = np.random.default_rng(cfg["seed"])
    data = create_dataset(
        cfg["num_buffers"],
        cfg["num_steps"],
        cfg["game"],
        cfg["data_dir_prefix"],
        cfg["trajectories_per_buffer"],
        cfg["seed"],
        cache=not cfg["no_cache"],
    )
    if data.actions.max() >= n_actions or data.actions.min() < 0:
        raise DatasetError(
            f"the replay holds action {data.actions.max()}, but {cfg['game']} has {n_actions}: "
            "is --game the game the data was recorded in?"
        )
    dataset = WindowDataset(data, cfg["context_length"])
    if len(dataset) == 0:
        raise DatasetError(
            f"no sampled trajectory is {cfg['context_length']} steps long; lower --context_length"
        )
    target = cfg["target_return"]
    if target is None:
        target = PAPER_TARGETS.get(cfg["game"], float(data.returns().max()))
    cfg["eval_target"] = float(target)

    device = torch.device(cfg["device"])
    model_cfg = AtariDTConfig(
        n_actions=n_actions,
        max_timestep=int(data.timesteps.max()),
        context_length=cfg["context_length"],
        model_type=cfg["model_type"],
        backbone=cfg["backbone"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_embd=cfg["embed_dim"],
        dropout=cfg["dropout"],
        n_kv_head=cfg["n_kv_head"],
        head_dim=cfg["head_dim"],
        mlp_ratio=cfg["mlp_ratio"],
        intermediate_size=cfg["intermediate_size"],
        rope_theta=cfg["rope_theta"],
        qk_norm=not cfg["no_qk_norm"],
    )
    try:
        model = AtariDecisionTransformer(model_cfg).to(device)
    except ValueError as e:  # backbone shape checks (heads, head_dim, ...)
        raise ConfigError(str(e)) from None
    tcfg = TrainerConfig(
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"],
        final_tokens=2 * len(dataset) * cfg["context_length"] * 3,
        num_workers=cfg["num_workers"],
        seed=cfg["seed"],
        steps_per_epoch=cfg["steps_per_epoch"],
    )
    autocast = torch.bfloat16 if cfg["dtype"] == "bf16" else None
    trainer = Trainer(model, dataset, tcfg, device, autocast)

    out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        set_rng_state(state["rng"], np_rng)
        print(f"resumed {out} at epoch {trainer.epoch + 1}, step {trainer.step}")
    else:
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    metrics = MetricsLog(out, cfg, wandb_id=state.get("wandb_id") if state else None)
    metrics.truncate(trainer.epoch)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{cfg['game']} {cfg['model_type']} ({cfg['backbone']}, {n_params / 1e6:.2f}M params): "
        f"{len(data)} transitions, {len(dataset)} windows, {trainer.steps_in_epoch()} steps/epoch"
    )

    def save(tr: Trainer) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "trainer": tr.state_dict(),
                "rng": rng_state(np_rng),
                "config": cfg,
                "wandb_id": metrics.wandb_id,
            },
        )

    def every(tr: Trainer) -> None:
        if tr.step % cfg["save_every"] == 0:
            save(tr)

    while trainer.epoch < cfg["epochs"]:
        t0 = time.time()
        logs = trainer.run_epoch(every)
        logs["time/train_s"] = time.time() - t0
        if cfg["eval_episodes"]:
            t0 = time.time()
            rets = evaluate(
                model,
                cfg["game"],
                0.0 if cfg["model_type"] == "naive" else cfg["eval_target"],
                cfg["eval_episodes"],
                cfg["eval_envs"],
                seed=cfg["seed"],
                device=device,
                max_steps=cfg["eval_max_steps"],
                autocast_dtype=autocast,
            )
            mean = float(np.mean(rets))
            logs.update(
                {
                    "eval/return_mean": mean,
                    "eval/return_std": float(np.std(rets)),
                    "eval/returns": rets,
                    "eval/target": cfg["eval_target"],
                    "time/eval_s": time.time() - t0,
                }
            )
            hns = human_normalized(cfg["game"], mean)
            if hns is not None:
                logs["eval/human_normalized"] = hns
            print(
                f"epoch {trainer.epoch}: loss {logs['train/loss']:.4f}, target "
                f"{cfg['eval_target']:g}, return {mean:.1f} +- {np.std(rets):.1f}"
                + (f", human-normalized {hns:.1f}" if hns is not None else "")
            )
        else:
            print(f"epoch {trainer.epoch}: loss {logs['train/loss']:.4f}")
        metrics.log(trainer.epoch, trainer.global_step, logs)
        save(trainer)
    metrics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
