"""One training run from flags to checkpoints: what experiment.py and experiment_qwen.py execute.

:func:`run` reads top to bottom as its phases, each a function of its own below it:
setup_distributed (torchrun's process group, or a world of one), load_data (every input check,
then the dataset; with --val_episodes the held-out split), make_selection (what best.pt keeps),
read_resume_checkpoint (with --resume: the checkpoint, its flags compared), build_policy (fresh,
pretrained-backbone or checkpoint weights), wrap_model (frozen heads, activation checkpointing,
compilation, DDP/FSDP), make_optimizer, restore (optimizer, schedule and RNG states),
open_run_dir (config.json, metrics.jsonl), make_batches, make_evaluation, make_validation,
make_trainer; then per iteration train_one_iteration (training, validation and evaluation),
checkpoint_states, write_best (when the iteration is the best so far) and write_checkpoint;
then, with --online_rounds, the online rounds (run/online.py's run_online: collect, add to the
replay buffer, train, save_iteration). With --init_from, read_init_checkpoint's offline
checkpoint stands for the offline iterations. The
configuration is one typed RunConfig (run/config.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.holdout import held_out_count, split_episodes, validation_batches
from ..data.loading import check_dataset_available, load_dataset
from ..data.sampler import BatchSampler
from ..data.scores import reference_scores
from ..data.trajectories import TrajectoryDataset
from ..envs import EnvSpec, get_spec, make_env
from ..evaluation.evaluate_episodes import (
    EvalEpisodes,
    StepHook,
    play_batched,
    play_one_by_one,
)
from ..models.factory import build_model, count_params, transformer_blocks
from ..training.act_trainer import ActTrainer
from ..training.odt_trainer import ODTTrainer
from ..training.optimizers import build_optimizer
from ..training.seq_trainer import SequenceTrainer
from ..training.trainer import PROGRESS_INTERVAL, NonFiniteError, Trainer
from ..training.validation import VALIDATION_KEY, ValidationSet
from .checkpoint import (
    CheckpointError,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    seed_iteration,
    set_rng_state,
)
from .config import (
    ConfigError,
    RunConfig,
    build_parser,
    resolve,
    resolve_targets,
    selection_target,
)
from .distributed import (
    DistContext,
    RankBatches,
    apply_activation_checkpointing,
    freeze_untrained_heads,
    unwrap,
)
from .errors import run_cli
from .metrics import MetricsLog
from .online import OnlinePhase, read_init_checkpoint, run_online, target_entropy
from .paths import RunDirLock, check_output_dir
from .selection import Selection

# Flags that may differ when a run is resumed; any other difference would not be the same run.
RESUMABLE_CHANGES = {
    # Where the run lives is not what it is: a folder moved, copied or spelled another way (a
    # relative path from elsewhere) resumes. Sharded checkpoints are named relative to it.
    "out_dir",
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
    "ddp_bf16_grads",
    # The online phase may be extended, and evaluated more or less often.
    "online_rounds",
    "online_eval_every",
}
# What --resume needs from checkpoint.pt; anything lacking one is not this project's checkpoint.
# ("model" and "optimizer" are absent from an FSDP run that skipped the consolidated copy: the
# "dcp" shards it names hold both.)
RESUME_KEYS = ("optimizer", "scheduler", "rng", "iteration", "config")
# The best iteration's weights (--select_by), beside checkpoint.pt; see run/selection.py.
BEST_NAME = "best.pt"


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
    cfg: RunConfig,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    target: float,
    ref_scores: tuple[float, float] | None = None,
    progress: bool = False,
    ctx: DistContext | None = None,
    lockstep: bool = False,
) -> Callable[[torch.nn.Module], dict]:
    """The evaluation run after each training iteration; evaluate.py replays it on a checkpoint
    through the same functions, so both report the same numbers. Under torchrun every rank plays
    its contiguous share of the seeds and the returns are gathered in seed order on all ranks.

    ``lockstep`` (a sharded model, whose every call is a collective): every rank plays as many
    seeds (a short share is padded with replays whose results are dropped) and steps until no
    rank has an episode running, so all make the same number of model calls."""
    ctx = ctx or DistContext()
    seeds = episode_seeds(cfg.seed, cfg.num_eval_episodes)

    def eval_fn(model) -> dict:
        model = unwrap(model)
        mine = ctx.share(seeds)
        still_running = None
        played = mine
        if lockstep:
            longest = -(-len(seeds) // ctx.world_size)
            played = mine + (mine or seeds)[-1:] * (longest - len(mine))
            device = next(model.parameters()).device
            still_running = partial(ctx.any_rank, device=device)
        returns, lengths = np.zeros(0), np.zeros(0)
        if played:
            returns, lengths = evaluate_returns(
                cfg, model, state_mean, state_std, target, played, progress, None, still_running
            )
        returns, lengths = returns[: len(mine)], lengths[: len(mine)]
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
    cfg: RunConfig,
    model: torch.nn.Module,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    target: float,
    seeds: list[int],
    progress: bool = False,
    on_step: StepHook | None = None,
    still_running: Callable[[bool], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of one episode per seed, batched or one by one as ``eval_envs`` says.
    ``on_step`` watches the episode of ``seeds[0]`` (see evaluate_episodes). With
    ``still_running`` (ranks in lockstep) episodes always go through the batched evaluator, one
    env at a time when ``eval_envs`` is 1 (the same returns as one by one)."""
    episodes = EvalEpisodes(
        env=cfg.env,
        mode=cfg.mode,
        conditioned=cfg.model_type == "dt",
        state_mean=state_mean,
        state_std=state_std,
        device=next(model.parameters()).device,
        target=target,
    )
    # disable=None: a bar on a terminal, nothing in logs and captured output.
    bar = tqdm(
        total=len(seeds),
        desc=f"evaluating target {target:g}",
        unit="episode",
        leave=False,
        disable=None if progress else True,
    )
    if cfg.eval_envs > 1 or still_running is not None:
        out = play_batched(
            episodes, model, seeds, max(cfg.eval_envs, 1), on_step, bar.update, still_running
        )
    else:
        out = play_one_by_one(episodes, model, seeds, on_step, bar.update)
    bar.close()
    return out


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
    blocks = transformer_blocks(model)
    if not blocks:
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


def reference_scores_for(cfg: RunConfig):
    return reference_scores(cfg.env, cfg.dataset)


def main(argv: list[str] | None = None, backbone: str = "gpt2") -> int:
    parser = build_parser(qwen=backbone == "qwen3")
    args = parser.parse_args(argv)
    # Logs redirected to a file (SLURM, nohup) should show each iteration as it ends.
    sys.stdout.reconfigure(line_buffering=True)
    return run_cli(lambda: run(resolve(args, backbone)))


# ---------------------------------------------------------------------------------------------
# The run, top to bottom. Each phase below is called once, in this order, by run_phases().
# ---------------------------------------------------------------------------------------------


def run(cfg: RunConfig) -> int:
    """One run (training, evaluation, checkpoints); its exit code."""
    code = run_phases(cfg)
    # FSDP2's hooks put the run's model in reference cycles that outlive run_phases' frame and
    # hold the process group: collected here, the group is freed while the interpreter is whole
    # (see DistContext.from_env for why that matters).
    gc.collect()
    return code


def run_phases(cfg: RunConfig) -> int:
    ctx = setup_distributed(cfg)
    fsdp = cfg.fsdp and ctx.world_size > 1
    # One process trains in a run folder at a time: rank 0 holds its lock (see RunDirLock).
    with RunDirLock(cfg.out_dir, enabled=ctx.is_main) as lock:
        data = load_data(cfg, ctx)
        targets = resolve_targets(cfg.env_targets, data.dataset.returns, data.spec.env_targets)
        selection = make_selection(cfg, data, targets)
        ckpt = read_resume_checkpoint(cfg, data.ckpt_path)
        # --init_from: an offline run's checkpoint stands for this run's offline phase.
        init = read_init_checkpoint(cfg, data.dataset.state_mean, data.dataset.state_std, ckpt)
        enable_tf32(cfg.device)
        if ctx.is_main:
            announce(cfg, ctx, fsdp, data.dataset, ckpt)
        # The same initial weights on every rank (FSDP shards them in place; DDP would broadcast).
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np_rng = np.random.default_rng(cfg.seed)
        model = build_policy(cfg, ctx, fsdp, data, ckpt or init)
        train_model = wrap_model(cfg, ctx, fsdp, model)
        optimizer, scheduler = make_optimizer(cfg, train_model)
        start = ckpt or init
        start_iter = restore(cfg, ctx, fsdp, data, start, train_model, optimizer, scheduler, np_rng)
        if selection is not None and ckpt is not None and "selection" in ckpt:
            selection.load_state_dict(ckpt["selection"])
        metrics = open_run_dir(cfg, data, ckpt, start_iter, lock) if ctx.is_main else None
        batches = make_batches(cfg, ctx, data, np_rng, start_iter)
        eval_fns = make_evaluation(cfg, ctx, fsdp, data, train_model, targets)
        val_fn = make_validation(cfg, ctx, data)
        trainer = make_trainer(
            cfg, ctx, train_model, optimizer, scheduler, batches, eval_fns, val_fn
        )
        trainer.global_step = cfg.steps_after(start_iter)
        trainer.load_extra_state(start or {})
        logs: dict = {}
        for it in range(start_iter, cfg.max_iters):
            logs = train_one_iteration(cfg, ctx, trainer, it, np_rng, data.ckpt_path)
            if logs is None:
                ctx.close()
                return 1
            # Collective under FSDP (every rank gathers or writes its shards), so outside is_main.
            state = checkpoint_states(cfg, data.out_dir, it + 1, train_model, optimizer, fsdp)
            state.update(trainer.extra_state())
            if ctx.is_main:
                metrics.log(it + 1, (it + 1) * cfg.num_steps_per_iter, logs)
                if selection is not None and selection.observe(it + 1, logs):
                    write_best(data, state, it + 1, targets, cfg, selection)
                write_checkpoint(
                    cfg, data, state, scheduler, np_rng, it + 1, targets, metrics, selection
                )
            ctx.barrier()
        if cfg.online_rounds:
            online = online_phase(
                cfg, ctx, fsdp, data, train_model, optimizer, scheduler, trainer, batches, np_rng,
                eval_fns, targets, metrics,
            )  # fmt: skip
            online_logs = run_online(online, ckpt)
            if online_logs is None:  # diverged (reported)
                ctx.close()
                return 1
            logs = online_logs or logs
        if ctx.is_main:
            print_summary(data.dataset, targets, logs, selection)
            metrics.close()
        ctx.close()
        return 0


@dataclass
class RunData:
    """What the run reads from the disk and the env before it builds anything."""

    spec: EnvSpec
    out_dir: Path
    ckpt_path: Path
    dataset: TrajectoryDataset
    state_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    # With --val_episodes: sorted indices of the episodes trained on and of those held out.
    train_episodes: np.ndarray | None = None
    val_episodes: np.ndarray | None = None

    def build_model(self, cfg: RunConfig) -> torch.nn.Module:
        return build_model(
            cfg.model_config(),
            self.state_dim,
            self.act_dim,
            self.spec.max_ep_len,
            self.action_low,
            self.action_high,
        )


def setup_distributed(cfg: RunConfig) -> DistContext:
    """Join torchrun's process group (a world of one without it); record the world's size."""
    ctx = DistContext.from_env(cfg.device, cfg.dist_timeout)
    cfg.device = ctx.device(cfg.device)
    cfg.world_size = ctx.world_size
    cfg.global_batch_size = cfg.batch_size * ctx.world_size * cfg.grad_accum_steps
    return ctx


def load_data(cfg: RunConfig, ctx: DistContext | None = None) -> RunData:
    """Everything that can fail on bad input, done before any training. Under torchrun each
    node's local rank 0 reads (for a minari id: downloads) the dataset first and its other
    ranks after, from the store or page cache it filled."""
    spec = get_spec(cfg.env)
    out_dir = check_output_dir(cfg.out_dir, "--out_dir")
    ckpt_path = out_dir / "checkpoint.pt"
    if cfg.resume and not ckpt_path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start afresh")
    if not cfg.resume and ckpt_path.exists():
        raise ConfigError(
            f"{out_dir} already holds a run: pass --resume to continue it or pick another --out_dir"
        )
    check_dataset_available(cfg.data_dir, cfg.env, cfg.dataset)
    env = make_env(cfg.env)
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    env.close()
    with (ctx or DistContext()).local_rank_first():
        dataset = load_dataset(cfg.data_dir, cfg.env, cfg.dataset, cfg.mode)
    dataset.check_env_dims(state_dim, act_dim, cfg.env, f"dataset '{cfg.dataset}'")
    data = RunData(spec, out_dir, ckpt_path, dataset, state_dim, act_dim, low, high)
    if cfg.val_episodes:
        hold_out_episodes(cfg, data)
    return data


def hold_out_episodes(cfg: RunConfig, data: RunData) -> None:
    """--val_episodes: the seeded split, and the state mean/std of the training episodes only
    (what the checkpoint records and evaluation normalises with). Targets such as max or p90
    still read the whole dataset's returns: they describe the data, not the split."""
    data.train_episodes, data.val_episodes = split_episodes(
        cfg.val_episodes, len(data.dataset.lengths), cfg.seed
    )
    data.dataset = data.dataset.with_state_stats_of(data.train_episodes)


def make_selection(cfg: RunConfig, data: RunData, targets: list[float]) -> Selection | None:
    """What best.pt keeps (--select_by), its target checked to be one evaluated; None when the
    run neither validates nor selects (then nothing of this runs: the run is as before)."""
    if not cfg.select_by:
        return Selection("", VALIDATION_KEY, True) if cfg.val_episodes else None
    if cfg.select_by == "val_error":
        return Selection(cfg.select_by, VALIDATION_KEY, True)
    spec = selection_target(cfg.select_by)
    (target,) = resolve_targets([spec], data.dataset.returns, data.spec.env_targets)
    if target not in targets:
        raise ConfigError(
            f"--select_by {cfg.select_by}: target {target:g} is not evaluated (targets: "
            f"{', '.join(f'{t:g}' for t in targets)}); add {spec} to --env_targets or select "
            "another"
        )
    key = f"evaluation/{target_key(target)}_return_mean"
    return Selection(cfg.select_by, key, False)


def read_resume_checkpoint(cfg: RunConfig, ckpt_path: Path) -> dict | None:
    """With --resume, the checkpoint, checked to come from a run with the same flags."""
    if not cfg.resume:
        return None
    # Memory-mapped: ranks on one machine share the page cache instead of a copy each.
    fix = "drop --resume to start afresh (in an empty --out_dir)"
    ckpt = read_checkpoint(ckpt_path, (), fix, mmap=True)
    sharded = isinstance(ckpt, dict) and "dcp" in ckpt
    missing = [
        k
        for k in RESUME_KEYS
        if not isinstance(ckpt, dict) or (k not in ckpt and not (sharded and k == "optimizer"))
    ]
    if missing:
        raise CheckpointError(
            f"{ckpt_path} is not a checkpoint written by experiment.py "
            f"(no {', '.join(missing)}); {fix}"
        )
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(
            f"--resume: {ckpt_path} was not written by experiment.py (its config is not a "
            "dict); start afresh in another --out_dir"
        )
    # A decaying schedule's length is max_iters x num_steps_per_iter: extending the run
    # would stretch the part already walked and jump the learning rate back up.
    fixed = {"max_iters"} if cfg.lr_decay != "none" else set()
    # Only the keys the checkpoint recorded: a run older than a flag resumes with any value of it.
    now = cfg.to_dict()
    changed = sorted(
        k
        for k, v in ckpt["config"].items()
        if (k not in RESUMABLE_CHANGES or k in fixed)
        and now.get(k) != v
        and k not in ("params", "backbone_params")
        # --init_from runs take these two from the checkpoint they started from
        and not (cfg.init_from and k in ("max_iters", "num_steps_per_iter"))
    )
    if changed:
        raise ConfigError(
            f"--resume: flags differ from the checkpoint's run ({', '.join(changed)}); "
            "resume with the original flags"
        )
    if "val_episodes" not in ckpt["config"] and (cfg.val_episodes or cfg.select_by):
        raise ConfigError(
            "--resume: the checkpoint's run predates --val_episodes and --select_by; resume it "
            "without them"
        )
    return ckpt


def announce(
    cfg: RunConfig, ctx: DistContext, fsdp: bool, dataset: TrajectoryDataset, ckpt: dict | None
) -> None:
    print("=" * 50)
    print(f"Starting new experiment: {cfg.env} {cfg.dataset}")
    print(dataset.summary())
    if cfg.val_episodes:
        print(
            f"validation: {held_out_count(cfg.val_episodes, len(dataset.lengths))} episodes "
            f"held out (--val_episodes {cfg.val_episodes}), {cfg.val_windows} fixed windows; "
            f"best.pt by {cfg.select_by}"
        )
    elif cfg.select_by:
        print(f"best.pt by {cfg.select_by}")
    print("=" * 50)
    print(
        f"global batch: {cfg.global_batch_size} windows per optimizer step "
        f"(batch_size {cfg.batch_size} x {ctx.world_size} processes x "
        f"{cfg.grad_accum_steps} accumulation steps){', FSDP' if fsdp else ''}"
    )
    if fsdp:
        from .fsdp import describe_mesh

        print(describe_mesh(ctx.world_size, ctx.local_world_size))
    saved = RunConfig.from_dict(ckpt["config"]) if ckpt is not None else None
    if saved is not None and saved.world_size != ctx.world_size:
        old = saved.global_batch_size or cfg.batch_size
        print(
            f"resuming with {ctx.world_size} processes instead of {saved.world_size}: the "
            f"global batch is {cfg.global_batch_size} instead of {old} windows, each step's "
            f"draw cut in {ctx.world_size} per-rank slices"
        )


def build_policy(
    cfg: RunConfig, ctx: DistContext, fsdp: bool, data: RunData, ckpt: dict | None
) -> torch.nn.Module:
    """The model with its starting weights (fresh, a Qwen3 backbone's, or the checkpoint's)."""
    # Only rank 0 holds real weights before DDP or FSDP starts; the others build shapes on the
    # meta device (no memory) and receive rank 0's weights: FSDP their shards (see
    # fsdp.fill_from_rank0), DDP the whole model (its construction broadcasts it). Loading into
    # meta parameters reads no tensors, so every rank still checks the same inputs. Rank 0
    # builds on CPU, then moves: the weights a seed gives do not depend on the device.
    on_meta = ctx.world_size > 1 and not ctx.is_main
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        model = data.build_model(cfg)
    init_backbone = cfg.qwen.init_backbone if cfg.qwen is not None else None
    if init_backbone and ckpt is None:
        from ..models.decision_transformer_qwen3 import load_backbone_from_pretrained

        try:
            load_backbone_from_pretrained(model, init_backbone)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--init_backbone: {e}") from None
    if ckpt is not None and "model" in ckpt:
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, TypeError) as e:
            raise unfit_checkpoint(data.ckpt_path, e) from None
    elif ckpt is not None and not fsdp:
        raise ConfigError(
            f"--resume: {data.ckpt_path} holds no consolidated weights (written with "
            "--consolidate_checkpoint false): resume it with --fsdp under torchrun"
        )
    cfg.params, cfg.backbone_params = count_params(model)
    if on_meta and not fsdp:
        model = model.to_empty(device=cfg.device)  # storage for DDP's broadcast of rank 0's
    elif not fsdp:
        model = model.to(cfg.device)
    # (FSDP moves each block to the GPU as it shards it: the whole model is never there.)
    if ctx.is_main:
        print(
            f"model: {type(model).__name__}, {cfg.params:,} parameters "
            f"({cfg.backbone_params:,} in the backbone)"
        )
    return model


def wrap_model(
    cfg: RunConfig, ctx: DistContext, fsdp: bool, model: torch.nn.Module
) -> torch.nn.Module:
    """Freeze what never trains, checkpoint and compile blocks if asked, then DDP or FSDP."""
    freeze_untrained_heads(model)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        compile_regions(model)
    # After sharding: FSDP2 replaces the parameters the optimizer must hold.
    full_state = model.state_dict() if fsdp and ctx.is_main else {}
    train_model = ctx.wrap(
        model, fsdp, cfg.dtype == "bf16", cfg.device, bf16_grads=cfg.ddp_bf16_grads
    )
    if fsdp:
        from .fsdp import fill_from_rank0

        fill_from_rank0(train_model, full_state, cfg.device)
    return train_model


def make_optimizer(cfg: RunConfig, model: torch.nn.Module):
    """The --optimizer (AdamW or LAMB) and its warmup (then constant or cosine) schedule."""
    # None (not False) elsewhere: torch's default choice of AdamW kernel, as before.
    optimizer = build_optimizer(
        cfg.optimizer,
        model.parameters(),
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        fused=use_fused_adamw(model) or None,
    )
    total = cfg.max_iters * cfg.num_steps_per_iter
    schedule = partial(lr_factor, warmup=cfg.warmup_steps, total=total, decay=cfg.lr_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def restore(
    cfg: RunConfig,
    ctx: DistContext,
    fsdp: bool,
    data: RunData,
    ckpt: dict | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    np_rng: np.random.Generator,
) -> int:
    """Optimizer, schedule and RNG states from the checkpoint; the iteration to start from."""
    if ckpt is None:
        return 0
    fused = use_fused_adamw(model) or None  # as make_optimizer chose
    try:
        for group in ckpt.get("optimizer", {}).get("param_groups", []):
            group["fused"] = fused  # a CPU run's checkpoint on CUDA too
        load_optimizer(ckpt, data.out_dir, model, optimizer, fsdp)
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], np_rng)
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise unfit_checkpoint(data.ckpt_path, e) from None
    if ctx.is_main and not cfg.resume:  # --init_from
        print(f"starting from {cfg.init_from} (after its iteration {ckpt['iteration']})")
    elif ctx.is_main:
        print(f"resuming {data.out_dir} after iteration {ckpt['iteration']}")
    return ckpt["iteration"]


def open_run_dir(
    cfg: RunConfig, data: RunData, ckpt: dict | None, start_iter: int, lock: RunDirLock
) -> MetricsLog:
    """Rank 0: the run folder (locked) with this run's config.json, and its metrics log."""
    data.out_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()  # a fresh run's folder exists only now; a resumed one's is already held
    # A run killed inside save_checkpoint leaves its temp file; checkpoint.pt is intact.
    for name in (data.ckpt_path.name, BEST_NAME):
        for stale in data.out_dir.glob(f"{name}*.tmp"):
            stale.unlink()
    (data.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    wandb_id = ckpt.get("wandb_id") if ckpt else None
    metrics = MetricsLog(data.out_dir, cfg.to_dict(), wandb_id=wandb_id)
    metrics.truncate(start_iter)
    return metrics


def make_batches(
    cfg: RunConfig, ctx: DistContext, data: RunData, np_rng: np.random.Generator, start_iter: int
) -> RankBatches:
    """This rank's share of each optimizer step's batch, from step ``start_iter`` on."""
    spec = data.spec
    sampler = BatchSampler(
        data.dataset, cfg.K, spec.max_ep_len, spec.scale, cfg.pct_traj, cfg.device, np_rng,
        segment_len=cfg.segment_len, episodes=data.train_episodes,
    )  # fmt: skip
    batches = RankBatches(
        sampler, cfg.seed, ctx, cfg.batch_size, cfg.grad_accum_steps, cfg.model_type == "dt"
    )
    batches.start_at(cfg.steps_after(start_iter))
    return batches


def make_trainer(
    cfg: RunConfig,
    ctx: DistContext,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: RankBatches,
    eval_fns: list[Callable],
    val_fn: Callable | None = None,
) -> Trainer:
    trainer_cls = SequenceTrainer if cfg.model_type == "dt" else ActTrainer
    odt = {}
    if cfg.policy == "stochastic":
        trainer_cls = ODTTrainer
        scale = unwrap(model).action_scale
        odt = dict(
            target_entropy=target_entropy(cfg, scale),
            init_temperature=cfg.init_temperature,
            temperature_lr=cfg.temperature_lr,
        )
    return trainer_cls(
        model,
        optimizer,
        cfg.batch_size,
        batches,
        loss_fn=lambda s_hat, a_hat, r_hat, s, a, r: torch.mean((a_hat - a) ** 2),
        scheduler=scheduler,
        eval_fns=eval_fns,
        autocast_dtype=torch.bfloat16 if cfg.dtype == "bf16" else None,
        progress=ctx.is_main,
        # Seconds between progress lines in redirected output (no bar there).
        progress_interval=float(os.environ.get("DT_PROGRESS_SECONDS", PROGRESS_INTERVAL)),
        grad_accum_steps=cfg.grad_accum_steps,
        ctx=ctx,
        **odt,
        val_fn=val_fn,
    )


def make_validation(cfg: RunConfig, ctx: DistContext, data: RunData) -> Callable | None:
    """With --val_episodes: the validation error on fixed windows of the held-out episodes,
    drawn once from (seed) and built on the device now (see training/validation.py)."""
    if data.val_episodes is None:
        return None
    if cfg.val_windows < 2 * ctx.world_size:
        raise ConfigError(
            f"--val_windows {cfg.val_windows} is too few for {ctx.world_size} processes: "
            f"use at least {2 * ctx.world_size}"
        )
    spec = data.spec
    sampler = BatchSampler(
        data.dataset, cfg.K, spec.max_ep_len, spec.scale, 1.0, cfg.device,
        segment_len=cfg.segment_len, episodes=data.val_episodes,
    )  # fmt: skip
    batches = validation_batches(
        sampler, cfg.val_windows, cfg.seed, cfg.batch_size, ctx.rank, ctx.world_size
    )
    windows = ValidationSet(batches, cfg.model_type == "dt", ctx)
    return lambda model: windows(unwrap(model))


def make_evaluation(
    cfg: RunConfig,
    ctx: DistContext,
    fsdp: bool,
    data: RunData,
    train_model: torch.nn.Module,
    targets: list[float],
) -> list[Callable]:
    """The evaluation after each iteration: every target, on every rank's share of episodes."""
    if cfg.num_eval_episodes <= 0:
        return []
    ref = reference_scores_for(cfg)
    mean, std = data.dataset.state_mean, data.dataset.state_std
    fns = [
        make_eval_fn(cfg, mean, std, t, ref, progress=ctx.is_main, ctx=ctx, lockstep=fsdp)
        for t in targets
    ]
    return [partial(evaluate_all, fns, fsdp)]


def train_one_iteration(
    cfg: RunConfig,
    ctx: DistContext,
    trainer,
    it: int,
    np_rng: np.random.Generator,
    ckpt_path: Path,
    num_steps: int | None = None,
) -> dict | None:
    """Iteration ``it`` (0-based) of training (``num_steps`` steps, default
    --num_steps_per_iter) and its evaluation; None if it diverged."""
    # Dropout and any other draw restart from (seed, rank, iteration): a resumed run and one
    # that never stopped see the same noise, whatever each rank saved.
    seed_iteration(cfg.seed, ctx.rank, it, np_rng)
    try:
        logs = trainer.train_iteration(
            num_steps or cfg.num_steps_per_iter, iter_num=it + 1, print_logs=ctx.is_main
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
        return None
    logs["training/global_batch_size"] = cfg.global_batch_size
    return logs


def write_checkpoint(
    cfg: RunConfig,
    data: RunData,
    states: dict,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    np_rng: np.random.Generator,
    iteration: int,
    targets: list[float],
    metrics: MetricsLog,
    selection: Selection | None = None,
) -> None:
    """Rank 0: checkpoint.pt after ``iteration``, atomically (see run/checkpoint.py)."""
    # Only runs that validate or select carry the key: other checkpoints are as before.
    extra = {"selection": selection.state_dict()} if selection is not None else {}
    save_checkpoint(
        data.ckpt_path,
        {
            **states,
            **extra,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(np_rng),
            "iteration": iteration,
            "state_mean": torch.from_numpy(data.dataset.state_mean),
            "state_std": torch.from_numpy(data.dataset.state_std),
            "config": cfg.to_dict(),
            # max/pNN targets need the dataset to resolve; evaluate.py reads them here
            "eval_targets": targets,
            "wandb_id": metrics.wandb_id,
        },
    )
    if "dcp" in states:
        from .fsdp import drop_old_shards

        drop_old_shards(data.out_dir, states["dcp"])


def online_phase(
    cfg: RunConfig,
    ctx: DistContext,
    fsdp: bool,
    data: RunData,
    train_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer: Trainer,
    batches: RankBatches,
    np_rng: np.random.Generator,
    eval_fns: list[Callable],
    targets: list[float],
    metrics: MetricsLog | None,
) -> OnlinePhase:
    """What run/online.py's rounds use of this run: its trainer, batches and evaluation, and
    how an iteration is trained, logged and checkpointed here."""

    def train(it: int, num_steps: int) -> dict | None:
        return train_one_iteration(cfg, ctx, trainer, it, np_rng, data.ckpt_path, num_steps)

    def log(iteration: int, step: int, logs: dict) -> None:
        if metrics is not None:  # rank 0
            metrics.log(iteration, step, logs)

    save = partial(
        save_iteration, cfg, ctx, fsdp, data, train_model, optimizer, trainer, scheduler, np_rng,
        targets, metrics,
    )  # fmt: skip
    spec = data.spec
    return OnlinePhase(
        cfg, ctx, data.dataset, spec.max_ep_len, spec.scale, trainer, batches, np_rng, eval_fns,
        targets, train=train, log=log, save=save,
    )  # fmt: skip


def save_iteration(
    cfg: RunConfig,
    ctx: DistContext,
    fsdp: bool,
    data: RunData,
    train_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer: Trainer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    np_rng: np.random.Generator,
    targets: list[float],
    metrics: MetricsLog | None,
    iteration: int,
    extra: dict,
) -> None:
    """The checkpoint after ``iteration`` with ``extra`` entries (the online phase's state)."""
    state = checkpoint_states(cfg, data.out_dir, iteration, train_model, optimizer, fsdp)
    state.update(trainer.extra_state(), **extra)
    if ctx.is_main:
        write_checkpoint(cfg, data, state, scheduler, np_rng, iteration, targets, metrics)
    ctx.barrier()


def write_best(
    data: RunData,
    states: dict,
    iteration: int,
    targets: list[float],
    cfg: RunConfig,
    selection: Selection,
) -> None:
    """Rank 0: best.pt, the weights of the best iteration so far, with what evaluate.py needs
    (no optimizer or RNG states: it is for evaluation; resume reads checkpoint.pt)."""
    save_checkpoint(
        data.out_dir / BEST_NAME,
        {
            "model": states["model"],
            "iteration": iteration,
            "state_mean": torch.from_numpy(data.dataset.state_mean),
            "state_std": torch.from_numpy(data.dataset.state_std),
            "config": cfg.to_dict(),
            "eval_targets": targets,
            "selection": selection.state_dict(),
        },
    )


def print_summary(
    dataset: TrajectoryDataset,
    targets: list[float],
    logs: dict,
    selection: Selection | None = None,
) -> None:
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
    if selection is not None and selection.best_iteration is not None:
        print(
            f"best.pt: iteration {selection.best_iteration} by {selection.criterion} "
            f"({selection.best_value:.6g})"
        )


def evaluate_all(fns: list[Callable], fsdp: bool, model: torch.nn.Module) -> dict:
    """Every target's evaluation on the training model itself. Under FSDP that is the sharded
    model, each block gathered for its forward only (the ranks play in lockstep, see
    make_eval_fn), instead of a full copy of the weights on every rank."""
    out: dict = {}
    with contextlib.nullcontext(model) if not fsdp else _fsdp_evaluating(model):
        for fn in fns:
            out.update(fn(model))
    return out


def _fsdp_evaluating(model: torch.nn.Module):
    from .fsdp import evaluating

    return evaluating(model)


def checkpoint_states(
    cfg: RunConfig, out_dir: Path, iteration: int, model, optimizer, fsdp: bool
) -> dict:
    """The weights and optimizer part of a checkpoint (rank 0's is the one written)."""
    if not fsdp:
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}
    from .fsdp import consolidated_state, save_sharded

    out_dir.mkdir(parents=True, exist_ok=True)
    states = {"dcp": save_sharded(out_dir, iteration, model, optimizer)}
    if cfg.consolidate_checkpoint:
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
