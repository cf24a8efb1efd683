"""One training run from flags to checkpoints: what experiment.py and experiment_qwen.py execute."""

from __future__ import annotations

import contextlib
import json
import math
import os
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
from ..data.scores import reference_scores
from ..data.trajectories import TrajectoryDataset
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
from ..training.trainer import PROGRESS_INTERVAL, NonFiniteError
from .checkpoint import (
    CheckpointError,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, build_parser, resolve, resolve_targets
from .distributed import (
    DistContext,
    RankBatches,
    apply_activation_checkpointing,
    freeze_untrained_heads,
    unwrap,
)
from .errors import run_cli
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
    # Scale-out: another process count re-cuts each step's global batch (see run/distributed.py).
    "world_size",
    "global_batch_size",
    "grad_accum_steps",
    "dist_timeout",
    "consolidate_checkpoint",
    "activation_checkpointing",
}
# What --resume needs from checkpoint.pt; anything lacking one is not this project's checkpoint.
# ("model" may be absent from an FSDP run that skipped the consolidated copy.)
RESUME_KEYS = ("optimizer", "scheduler", "rng", "iteration", "config")


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
    ctx: DistContext | None = None,
) -> Callable[[torch.nn.Module], dict]:
    """The evaluation run after each training iteration; evaluate.py replays it on a checkpoint
    through the same functions, so both report the same numbers. Under torchrun every rank plays
    its contiguous share of the seeds and the returns are gathered in seed order on all ranks."""
    ctx = ctx or DistContext()
    seeds = episode_seeds(cfg["seed"], cfg["num_eval_episodes"])

    def eval_fn(model) -> dict:
        model = unwrap(model)
        mine = ctx.share(seeds)
        returns, lengths = (
            evaluate_returns(cfg, model, state_mean, state_std, target, mine, progress=progress)
            if mine
            else (np.zeros(0), np.zeros(0))
        )
        returns, lengths = ctx.gather_episodes(returns), ctx.gather_episodes(lengths)
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


def enable_tf32(device: str) -> None:
    """fp32 matmuls and convolutions on CUDA in TF32 (10-bit mantissa inputs, fp32 accumulation):
    the tensor cores' fp32 path, several times faster than IEEE fp32 on Ampere and later. bf16 runs
    are unaffected. Never on CPU, whose results stay exactly as they were."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def use_fused_adamw(model: torch.nn.Module) -> bool:
    """AdamW's fused kernel (one launch for all parameters) when every parameter is on CUDA; on
    CPU the default for-each path, so CPU runs keep their exact results."""
    return all(p.is_cuda for p in model.parameters())


def compile_regions(model: torch.nn.Module, **compile_kwargs) -> None:
    """Regional compilation: ``torch.compile`` each transformer block on its own, in place (the
    state dict keeps its names). The blocks share one code object, so one compile serves all of
    them and start-up stays short; embeddings, heads and masks stay eager. BC compiles its MLP."""
    blocks = getattr(model, "transformer", None)
    blocks = getattr(blocks, "layers", None) or getattr(blocks, "h", None)
    if blocks is None:
        model.compile(**compile_kwargs)
        return
    for block in blocks:
        block.compile(**compile_kwargs)


def unfit_checkpoint(path: Path, error: Exception) -> CheckpointError:
    """A readable checkpoint whose tensors or states do not load into this run's model."""
    return CheckpointError(
        f"--resume: {path} does not fit this run's model ({str(error).splitlines()[0]}); "
        "resume with the original flags or start afresh"
    )


def reference_scores_for(cfg: dict):
    return reference_scores(cfg["env"], cfg["dataset"])


def main(argv: list[str] | None = None, backbone: str = "gpt2") -> int:
    parser = build_parser(qwen=backbone == "qwen3")
    args = parser.parse_args(argv)
    # Logs redirected to a file (SLURM, nohup) should show each iteration as it ends.
    sys.stdout.reconfigure(line_buffering=True)
    return run_cli(lambda: run(resolve(args, backbone)))


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
    ctx = DistContext.from_env(cfg["device"], cfg.get("dist_timeout", 60.0))
    cfg["device"] = ctx.device(cfg["device"])
    cfg["world_size"] = ctx.world_size
    accum = cfg.get("grad_accum_steps", 1)
    cfg["global_batch_size"] = cfg["batch_size"] * ctx.world_size * accum
    fsdp = bool(cfg.get("fsdp")) and ctx.world_size > 1
    spec, out_dir, ckpt_path, dataset, (state_dim, act_dim, low, high) = prepare(cfg)
    ckpt = None
    if cfg["resume"]:
        # Memory-mapped: ranks on one machine share the page cache instead of a copy each.
        ckpt = read_checkpoint(
            ckpt_path,
            RESUME_KEYS,
            "drop --resume to start afresh (in an empty --out_dir)",
            mmap=True,
        )
    if ckpt is not None:
        # A decaying schedule's length is max_iters x num_steps_per_iter: extending the run
        # would stretch the part already walked and jump the learning rate back up.
        if not isinstance(ckpt["config"], dict):
            raise CheckpointError(
                f"--resume: {ckpt_path} was not written by experiment.py (its config is not a "
                "dict); start afresh in another --out_dir"
            )
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
    enable_tf32(device)

    if ctx.is_main:
        print("=" * 50)
        print(f"Starting new experiment: {cfg['env']} {cfg['dataset']}")
        print(dataset.summary())
        print("=" * 50)
        print(
            f"global batch: {cfg['global_batch_size']} windows per optimizer step "
            f"(batch_size {cfg['batch_size']} x {ctx.world_size} processes x "
            f"{accum} accumulation steps){', FSDP' if fsdp else ''}"
        )
        if ckpt is not None and ckpt["config"].get("world_size", 1) != ctx.world_size:
            old = ckpt["config"].get("global_batch_size", cfg["batch_size"])
            print(
                f"resuming with {ctx.world_size} processes instead of "
                f"{ckpt['config'].get('world_size', 1)}: the global batch is "
                f"{cfg['global_batch_size']} instead of {old} windows, each step's draw cut in "
                f"{ctx.world_size} per-rank slices"
            )

    # The same initial weights on every rank (FSDP shards them in place; DDP would broadcast).
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    np_rng = np.random.default_rng(cfg["seed"])

    # Under FSDP only rank 0 holds real weights before sharding; the others build shapes on the
    # meta device (no memory) and receive their shards from rank 0 (see fsdp.fill_from_rank0).
    # Loading into meta parameters is a no-op, so every rank still checks the same inputs.
    on_meta = fsdp and not ctx.is_main
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        model = build_model(cfg, state_dim, act_dim, spec.max_ep_len, low, high)
    if cfg.get("init_backbone") and ckpt is None:
        from ..models.decision_transformer_qwen3 import load_backbone_from_pretrained

        try:
            load_backbone_from_pretrained(model, cfg["init_backbone"])
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--init_backbone: {e}") from None
    if ckpt is not None and "model" in ckpt:
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, TypeError) as e:
            raise unfit_checkpoint(ckpt_path, e) from None
    elif ckpt is not None and not fsdp:
        raise ConfigError(
            f"--resume: {ckpt_path} holds no consolidated weights (written with "
            "--consolidate_checkpoint false): resume it with --fsdp under torchrun"
        )
    if not fsdp:
        model = model.to(device)
    # (FSDP moves each block to the GPU as it shards it: the whole model is never there.)
    cfg["params"], cfg["backbone_params"] = count_params(model)
    if ctx.is_main:
        print(
            f"model: {type(model).__name__}, {cfg['params']:,} parameters "
            f"({cfg['backbone_params']:,} in the backbone)"
        )

    freeze_untrained_heads(model)
    if cfg.get("activation_checkpointing"):
        apply_activation_checkpointing(model)
    if cfg.get("compile"):
        compile_regions(model)
    bf16 = cfg.get("dtype") == "bf16"
    # After sharding: FSDP2 replaces the parameters the optimizer must hold.
    full_state = model.state_dict() if fsdp and ctx.is_main else {}
    train_model = ctx.wrap(model, fsdp=fsdp, bf16=bf16, device=device)
    if fsdp:
        from .fsdp import fill_from_rank0

        fill_from_rank0(train_model, full_state, device)
        del full_state
    # None (not False) elsewhere: torch's default choice of AdamW kernel, as before.
    fused = use_fused_adamw(train_model) or None
    optimizer = torch.optim.AdamW(
        train_model.parameters(),
        lr=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"],
        fused=fused,
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
        try:
            for group in ckpt.get("optimizer", {}).get("param_groups", []):
                group["fused"] = fused  # a CPU run's checkpoint on CUDA too
            load_optimizer(ckpt, out_dir, train_model, optimizer, fsdp)
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"], np_rng)
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise unfit_checkpoint(ckpt_path, e) from None
        start_iter = ckpt["iteration"]
        if ctx.is_main:
            print(f"resuming {out_dir} after iteration {start_iter}")

    metrics = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A run killed inside save_checkpoint leaves its temp file; checkpoint.pt is intact.
        for stale in out_dir.glob(f"{ckpt_path.name}*.tmp"):
            stale.unlink()
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        metrics = MetricsLog(out_dir, cfg, wandb_id=ckpt.get("wandb_id") if ckpt else None)
        metrics.truncate(start_iter)

    sampler = BatchSampler(
        dataset, cfg["K"], spec.max_ep_len, spec.scale, cfg["pct_traj"], device, np_rng,
        segment_len=cfg["segment_len"],
    )  # fmt: skip
    batches = RankBatches(
        sampler, cfg["seed"], ctx, cfg["batch_size"], accum, cfg["model_type"] == "dt"
    )
    batches.start_at(start_iter * cfg["num_steps_per_iter"])
    targets = resolve_targets(cfg["env_targets"], dataset.returns, spec.env_targets)
    eval_fns = []
    if cfg["num_eval_episodes"] > 0:
        ref = reference_scores_for(cfg)
        fns = [
            make_eval_fn(
                cfg, dataset.state_mean, dataset.state_std, t, ref, progress=ctx.is_main, ctx=ctx
            )
            for t in targets
        ]
        build_eval = partial(build_model, cfg, state_dim, act_dim, spec.max_ep_len, low, high)
        eval_fns = [partial(evaluate_all, fns, eval_view(cfg, train_model, fsdp, build_eval))]
    trainer_cls = SequenceTrainer if cfg["model_type"] == "dt" else ActTrainer
    trainer = trainer_cls(
        train_model,
        optimizer,
        cfg["batch_size"],
        batches,
        loss_fn=lambda s_hat, a_hat, r_hat, s, a, r: torch.mean((a_hat - a) ** 2),
        scheduler=scheduler,
        eval_fns=eval_fns,
        autocast_dtype=torch.bfloat16 if cfg.get("dtype") == "bf16" else None,
        progress=ctx.is_main,
        # Seconds between progress lines in redirected output (no bar there).
        progress_interval=float(os.environ.get("DT_PROGRESS_SECONDS", PROGRESS_INTERVAL)),
        grad_accum_steps=accum,
        ctx=ctx,
    )

    trainer.global_step = start_iter * cfg["num_steps_per_iter"]
    logs: dict = {}
    for it in range(start_iter, cfg["max_iters"]):
        # Dropout and any other draw restart from (seed, rank, iteration): a resumed run and one
        # that never stopped see the same noise, whatever each rank saved.
        seed_iteration(cfg["seed"], ctx.rank, it, np_rng)
        try:
            logs = trainer.train_iteration(
                cfg["num_steps_per_iter"], iter_num=it + 1, print_logs=ctx.is_main
            )
        except NonFiniteError as e:
            # Checkpoints are written only after an iteration whose every step passed the
            # guard, so the one on disk (if any) is the last good one.
            kept = (
                f"the last good checkpoint {ckpt_path} (iteration {it}) is kept"
                if it
                else "no checkpoint was written"
            )
            print(
                f"error: training diverged in iteration {it + 1}: {e}; {kept}. "
                "Lower --learning_rate or check the dataset.",
                file=sys.stderr,
            )
            ctx.close()
            return 1
        logs["training/global_batch_size"] = cfg["global_batch_size"]
        # Collective under FSDP (every rank gathers or writes its shards), so outside is_main.
        states = checkpoint_states(cfg, out_dir, it + 1, train_model, optimizer, fsdp)
        if ctx.is_main:
            metrics.log(it + 1, (it + 1) * cfg["num_steps_per_iter"], logs)
            save_checkpoint(
                ckpt_path,
                {
                    **states,
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
            if fsdp:
                from .fsdp import drop_old_shards

                drop_old_shards(out_dir, states["dcp"])
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


def seed_iteration(seed: int, rank: int, iteration: int, np_rng: np.random.Generator) -> None:
    """Seed torch (every device), Python and numpy from ``(seed, rank, iteration)``."""
    state = np.random.SeedSequence([seed, rank, iteration]).generate_state(2)
    torch.manual_seed(int(state[0]))
    random.seed(int(state[1]))
    np_rng.bit_generator.state = np.random.default_rng(state).bit_generator.state


def evaluate_all(fns: list[Callable], view: Callable[[], torch.nn.Module], _model) -> dict:
    """Every target's evaluation on one evaluable view of the model."""
    model, out = view(), {}
    for fn in fns:
        out.update(fn(model))
    return out


def eval_view(cfg: dict, train_model: torch.nn.Module, fsdp: bool, build: Callable):
    """What evaluation plays: the model itself, or under FSDP a plain local copy of the gathered
    weights (ranks play different numbers of steps, which sharded forwards can't)."""
    if not fsdp:
        return lambda: unwrap(train_model)
    holder: list[torch.nn.Module] = []

    def view() -> torch.nn.Module:
        from .fsdp import full_model_state

        if not holder:
            holder.append(build().to(cfg["device"]))
        holder[0].load_state_dict(full_model_state(train_model))
        return holder[0]

    return view


def checkpoint_states(cfg, out_dir: Path, iteration: int, model, optimizer, fsdp: bool) -> dict:
    """The weights and optimizer part of a checkpoint (rank 0's is the one written)."""
    if not fsdp:
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}
    from .fsdp import consolidated_state, save_sharded

    out_dir.mkdir(parents=True, exist_ok=True)
    states = {"dcp": save_sharded(out_dir, iteration, model, optimizer)}
    if cfg.get("consolidate_checkpoint", True):
        model_sd, optim_sd = consolidated_state(model, optimizer)
        states.update(model=model_sd, optimizer=optim_sd, optimizer_format="fqn")
    return states


def load_optimizer(ckpt: dict, out_dir: Path, model, optimizer, fsdp: bool) -> None:
    """Optimizer state (and under FSDP the sharded weights) from a checkpoint of any mode."""
    if fsdp and "dcp" in ckpt:
        from .fsdp import load_sharded

        load_sharded(out_dir / ckpt["dcp"], model, optimizer)
    elif ckpt.get("optimizer_format") == "fqn":
        from .fsdp import load_full_optimizer

        load_full_optimizer(model, optimizer, ckpt["optimizer"])
    else:
        optimizer.load_state_dict(ckpt["optimizer"])
