"""One training run from flags to checkpoints: what experiment.py and experiment_qwen.py execute."""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.loading import check_dataset_available, load_dataset
from ..data.sampler import BatchSampler
from ..data.trajectories import DatasetError, TrajectoryDataset
from ..envs import get_spec, make_env
from ..evaluation.evaluate_episodes import (
    StepHook,
    evaluate_batched,
    evaluate_episode,
    evaluate_episode_rtg,
)
from ..models.factory import build_model, count_params
from ..training.act_trainer import ActTrainer
from ..training.seq_trainer import SequenceTrainer
from ..training.trainer import NonFiniteLossError
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, build_parser, resolve, resolve_targets
from .distributed import DistContext
from .metrics import MetricsLog

# Flags that may differ when a run is resumed; any other difference would not be the same run.
RESUMABLE_CHANGES = {
    "max_iters",
    "device",
    "log_to_wandb",
    "num_eval_episodes",
    "eval_envs",
    "resume",
    "compile",
    "data_dir",
    "env_targets",
}


def episode_seeds(seed: int, num_episodes: int) -> list[int]:
    """Evaluation episode i of a run always starts from the same env seed, so iterations compare
    like with like and evaluate.py can replay a run's evaluation."""
    return [seed * 100_000 + i for i in range(num_episodes)]


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps: linear warmup, then constant or a
    cosine down to a tenth at ``total`` (annealing averages out action noise a constant rate
    keeps chasing)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "none" or total <= warmup:
        return 1.0
    progress = min((step - warmup) / (total - warmup), 1.0)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def target_key(target: float) -> str:
    return f"target_{target:g}"


def make_eval_fn(
    cfg: dict,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    target: float,
    ref_scores: tuple[float, float] | None = None,
    progress: bool = False,
) -> Callable[[torch.nn.Module], dict]:
    """The evaluation run after each training iteration; evaluate.py replays it on a checkpoint
    through the same functions, so both report the same numbers."""
    seeds = episode_seeds(cfg["seed"], cfg["num_eval_episodes"])

    def eval_fn(model) -> dict:
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        returns, lengths = evaluate_returns(
            cfg, model, state_mean, state_std, target, seeds, progress=progress
        )
        return summarize_returns(target, returns, lengths, ref_scores)

    return eval_fn


def summarize_returns(
    target: float,
    returns: np.ndarray,
    lengths: np.ndarray,
    ref_scores: tuple[float, float] | None = None,
) -> dict:
    """The logged numbers of one target, keyed as in metrics.jsonl without 'evaluation/'."""
    key = target_key(target)
    out = {
        f"{key}_return_mean": float(np.mean(returns)),
        f"{key}_return_std": float(np.std(returns)),
        f"{key}_length_mean": float(np.mean(lengths)),
        f"{key}_length_std": float(np.std(lengths)),
    }
    if ref_scores is not None:
        lo, hi = ref_scores
        out[f"{key}_normalized_score"] = float(100 * (np.mean(returns) - lo) / (hi - lo))
    return out


def evaluate_returns(
    cfg: dict,
    model: torch.nn.Module,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    target: float,
    seeds: list[int],
    progress: bool = False,
    on_step: StepHook | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of one episode per seed, batched or one by one as ``eval_envs`` says.
    ``on_step`` watches the episode of ``seeds[0]`` (see evaluate_episodes)."""
    spec = get_spec(cfg["env"])
    conditioned = cfg["model_type"] == "dt"
    device = next(model.parameters()).device
    # disable=None: a bar on a terminal, nothing in logs and captured output.
    bar = tqdm(
        total=len(seeds),
        desc=f"evaluating target {target:g}",
        unit="episode",
        leave=False,
        disable=None if progress else True,
    )
    returns, lengths = [], []
    if cfg["eval_envs"] > 1:
        returns, lengths = evaluate_batched(
            cfg["env"],
            model,
            seeds,
            cfg["eval_envs"],
            spec.max_ep_len,
            spec.scale,
            state_mean,
            state_std,
            device,
            target / spec.scale,
            cfg["mode"],
            conditioned,
            on_step=on_step,
            on_chunk=bar.update,
        )
        bar.close()
        return returns, lengths
    env = make_env(cfg["env"])
    for i, s in enumerate(seeds):
        hook = on_step if i == 0 else None
        if conditioned:
            r, n = evaluate_episode_rtg(
                env,
                env.observation_space.shape[0],
                env.action_space.shape[0],
                model,
                spec.max_ep_len,
                spec.scale,
                state_mean,
                state_std,
                device,
                target / spec.scale,
                cfg["mode"],
                seed=s,
                on_step=hook,
            )
        else:
            r, n = evaluate_episode(
                env,
                env.observation_space.shape[0],
                env.action_space.shape[0],
                model,
                spec.max_ep_len,
                device,
                target / spec.scale,
                cfg["mode"],
                state_mean,
                state_std,
                seed=s,
                on_step=hook,
            )
        returns.append(r)
        lengths.append(n)
        bar.update(1)
    bar.close()
    env.close()
    return np.array(returns), np.array(lengths)


def reference_scores_for(cfg: dict):
    try:
        from ..data.scores import reference_scores
    except ImportError:
        return None
    return reference_scores(cfg["env"], cfg["dataset"])


def main(argv: list[str] | None = None, backbone: str = "gpt2") -> int:
    parser = build_parser(qwen=backbone == "qwen3")
    args = parser.parse_args(argv)
    # Logs redirected to a file (SLURM, nohup) should show each iteration as it ends.
    sys.stdout.reconfigure(line_buffering=True)
    try:
        return run(resolve(args, backbone))
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def prepare(cfg: dict):
    """Everything that can fail on bad input, done before any training."""
    spec = get_spec(cfg["env"])
    out_dir = Path(cfg["out_dir"])
    ckpt_path = out_dir / "checkpoint.pt"
    if cfg["resume"] and not ckpt_path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start afresh")
    if not cfg["resume"] and ckpt_path.exists():
        raise ConfigError(
            f"{out_dir} already holds a run: pass --resume to continue it or pick another --out_dir"
        )
    check_dataset_available(cfg["data_dir"], cfg["env"], cfg["dataset"])
    env = make_env(cfg["env"])
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    env.close()
    dataset = load_dataset(cfg["data_dir"], cfg["env"], cfg["dataset"], cfg["mode"])
    dataset.check_env_dims(state_dim, act_dim, cfg["env"], f"dataset '{cfg['dataset']}'")
    return spec, out_dir, ckpt_path, dataset, (state_dim, act_dim, low, high)


def run(cfg: dict) -> int:
    ctx = DistContext.from_env(cfg["device"])
    cfg["device"] = ctx.device(cfg["device"])
    spec, out_dir, ckpt_path, dataset, (state_dim, act_dim, low, high) = prepare(cfg)
    ckpt = load_checkpoint(ckpt_path) if cfg["resume"] else None
    if ckpt is not None:
        # A decaying schedule's length is max_iters x num_steps_per_iter: extending the run
        # would stretch the part already walked and jump the learning rate back up.
        fixed = {"max_iters"} if cfg["lr_decay"] != "none" else set()
        changed = sorted(
            k
            for k, v in ckpt["config"].items()
            if (k not in RESUMABLE_CHANGES or k in fixed)
            and cfg.get(k) != v
            and k not in ("params", "backbone_params")
        )
        if changed:
            raise ConfigError(
                f"--resume: flags differ from the checkpoint's run ({', '.join(changed)}); "
                "resume with the original flags"
            )
    device = cfg["device"]

    if ctx.is_main:
        print("=" * 50)
        print(f"Starting new experiment: {cfg['env']} {cfg['dataset']}")
        print(dataset.summary())
        print("=" * 50)

    # Seeds differ per rank so that ranks draw different batches.
    torch.manual_seed(cfg["seed"] + ctx.rank)
    random.seed(cfg["seed"] + ctx.rank)
    np_rng = np.random.default_rng(cfg["seed"] + ctx.rank)

    model = build_model(cfg, state_dim, act_dim, spec.max_ep_len, low, high)
    if cfg.get("init_backbone") and ckpt is None:
        from ..models.decision_transformer_qwen3 import load_backbone_from_pretrained

        try:
            load_backbone_from_pretrained(model, cfg["init_backbone"])
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--init_backbone: {e}") from None
    model = model.to(device)
    cfg["params"], cfg["backbone_params"] = count_params(model)
    if ctx.is_main:
        print(
            f"model: {type(model).__name__}, {cfg['params']:,} parameters "
            f"({cfg['backbone_params']:,} in the backbone)"
        )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(
            lr_factor,
            warmup=cfg["warmup_steps"],
            total=cfg["max_iters"] * cfg["num_steps_per_iter"],
            decay=cfg["lr_decay"],
        ),
    )
    start_iter = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], np_rng)
        start_iter = ckpt["iteration"]
        if ctx.is_main:
            print(f"resuming {out_dir} after iteration {start_iter}")
    if cfg.get("compile"):
        model.compile()
    train_model = ctx.wrap(model)

    metrics = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        metrics = MetricsLog(out_dir, cfg, wandb_id=ckpt.get("wandb_id") if ckpt else None)
        metrics.truncate(start_iter)

    sampler = BatchSampler(
        dataset, cfg["K"], spec.max_ep_len, spec.scale, cfg["pct_traj"], device, np_rng,
        segment_len=cfg["segment_len"],
    )  # fmt: skip
    targets = resolve_targets(cfg["env_targets"], dataset.returns, spec.env_targets)
    eval_fns = []
    if ctx.is_main and cfg["num_eval_episodes"] > 0:
        ref = reference_scores_for(cfg)
        eval_fns = [
            make_eval_fn(cfg, dataset.state_mean, dataset.state_std, t, ref, progress=True)
            for t in targets
        ]
    trainer_cls = SequenceTrainer if cfg["model_type"] == "dt" else ActTrainer
    trainer = trainer_cls(
        train_model,
        optimizer,
        cfg["batch_size"],
        sampler,
        loss_fn=lambda s_hat, a_hat, r_hat, s, a, r: torch.mean((a_hat - a) ** 2),
        scheduler=scheduler,
        eval_fns=eval_fns,
        autocast_dtype=torch.bfloat16 if cfg.get("dtype") == "bf16" else None,
        progress=ctx.is_main,
    )

    logs: dict = {}
    for it in range(start_iter, cfg["max_iters"]):
        try:
            logs = trainer.train_iteration(
                cfg["num_steps_per_iter"], iter_num=it + 1, print_logs=ctx.is_main
            )
        except NonFiniteLossError as e:
            kept = (
                f"the last good checkpoint {ckpt_path} (iteration {it}) is kept"
                if it
                else ("no checkpoint was written")
            )
            print(
                f"error: {e}; {kept}. Lower --learning_rate or check the dataset.", file=sys.stderr
            )
            return 1
        if ctx.is_main:
            metrics.log(it + 1, (it + 1) * cfg["num_steps_per_iter"], logs)
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(np_rng),
                    "iteration": it + 1,
                    "state_mean": torch.from_numpy(dataset.state_mean),
                    "state_std": torch.from_numpy(dataset.state_std),
                    "config": cfg,
                    # max/pNN targets need the dataset to resolve; evaluate.py reads them here
                    "eval_targets": targets,
                    "wandb_id": metrics.wandb_id,
                },
            )
        ctx.barrier()

    if ctx.is_main:
        print_summary(dataset, targets, logs)
        metrics.close()
    ctx.close()
    return 0


def print_summary(dataset: TrajectoryDataset, targets: list[float], logs: dict) -> None:
    r = dataset.returns
    print("=" * 50)
    print(
        f"dataset returns: mean {r.mean():.1f}, 90th percentile {np.percentile(r, 90):.1f}, "
        f"max {r.max():.1f}"
    )
    for t in targets:
        key = f"evaluation/{target_key(t)}_return_mean"
        if key in logs:
            std = logs[f"evaluation/{target_key(t)}_return_std"]
            print(f"achieved return at target {t:g}: {logs[key]:.1f} ± {std:.1f}")
