"""The online phase of a run: the Online Decision Transformer's rounds (Zheng et al., 2022).

After the offline iterations (or from ``--init_from``'s checkpoint), round ``r`` is iteration
``max_iters + r`` of the run and does, in order:

1. collect ``--online_episodes`` episodes with the stochastic policy, sampled, conditioned on
   ``--online_rtg``, through the evaluators' batched rollout core (several envs, one model call
   per step, the DT's rolling key/value cache in ``--attention window``);
2. add them to the replay buffer (``data/replay_buffer.py``: the best offline trajectories
   first, FIFO; returns-to-go relabelled with the returns achieved);
3. take ``--online_updates`` guarded gradient steps on windows drawn from the buffer;
4. evaluate (every ``--online_eval_every`` rounds and after the last), log a metrics row and
   write the checkpoint, which holds the buffer, the round and the env steps.

Everything random in a round is a function of ``(seed, rank, iteration)``: collection's env
seeds and its sampling generator, and (through the trainer) the batches and dropout. With the
buffer restored from the checkpoint, ``--resume`` after a kill replays the interrupted round
exactly.

Under torchrun each rank plays its contiguous share of a round's episodes; the episodes are
gathered in rank order and every rank adds all of them, so the buffer is replicated and equal on
every rank (and each optimizer step's global batch is cut from one draw, as offline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..data.replay_buffer import TrajectoryReplayBuffer
from ..envs import default_online_rtg
from ..evaluation.evaluate_episodes import EvalEpisodes, collect_batched
from ..models.policy_heads import default_target_entropy, unit_box_entropy_to_env
from .checkpoint import CheckpointError, read_checkpoint, seed_iteration
from .config import ConfigError, RunConfig, model_flags_fix
from .distributed import DistContext, RankBatches, unwrap

# What --init_from reads from an offline run's checkpoint.
INIT_KEYS = (
    "model", "optimizer", "scheduler", "rng", "iteration", "config", "state_mean", "state_std",
)  # fmt: skip


def target_entropy(cfg: RunConfig, action_scale: torch.Tensor) -> float:
    """The entropy target in env units: ``--target_entropy`` (unit-box convention) or the
    ODT's ``-act_dim`` carried to the env's box (models/policy_heads.py)."""
    if cfg.target_entropy is None:
        return default_target_entropy(action_scale.cpu())
    return unit_box_entropy_to_env(cfg.target_entropy, action_scale.cpu())


def read_init_checkpoint(cfg: RunConfig, state_mean, state_std, resumed: dict | None):
    """``--init_from``: the offline checkpoint to start from, checked to fit this run (None
    without the flag, or on --resume, which continues from the run's own checkpoint). The run
    takes over the checkpoint's ``max_iters`` and ``num_steps_per_iter``: its offline phase is
    that run's."""
    if not cfg.init_from:
        return None
    if resumed is not None:
        saved = RunConfig.from_dict(resumed["config"])
        cfg.max_iters, cfg.num_steps_per_iter = saved.max_iters, saved.num_steps_per_iter
        return None
    fix = "pass the checkpoint.pt of a finished offline run"
    ckpt = read_checkpoint(cfg.init_from, INIT_KEYS, fix, mmap=True)
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"--init_from: {cfg.init_from} has no run config; {fix}")
    if "online" in ckpt:
        raise ConfigError(
            f"--init_from: {cfg.init_from} is an online run's checkpoint: continue that run "
            "with --resume in its own --out_dir"
        )
    src = RunConfig.from_dict(ckpt["config"])
    if src.policy != "stochastic":
        raise ConfigError(
            f"--init_from: {cfg.init_from} has a {src.policy} head; the online phase needs "
            "one pretrained with --policy stochastic"
        )
    mine, theirs = cfg.model_config(), src.model_config()
    # Dropout may differ (not a weight); everything else shapes or defines the model.
    differ = [
        k
        for k in mine.__dataclass_fields__
        if k not in ("dropout", "eval_context") and getattr(mine, k) != getattr(theirs, k)
    ]
    if differ:
        script = "experiment_qwen.py" if theirs.backbone == "qwen3" else "experiment.py"
        raise ConfigError(
            f"--init_from: {cfg.init_from} was trained with other model flags: use {script} "
            f"{model_flags_fix(differ, theirs)}"
        )
    if src.optimizer != cfg.optimizer:  # its optimizer state is what the online phase continues
        raise ConfigError(
            f"--init_from: {cfg.init_from} was trained with --optimizer {src.optimizer}: use it "
            "here too"
        )
    if not (
        np.array_equal(ckpt["state_mean"].numpy(), state_mean)
        and np.array_equal(ckpt["state_std"].numpy(), state_std)
    ):
        raise ConfigError(
            f"--init_from: {cfg.init_from} was trained on another dataset (other state "
            f"statistics): use its --env/--dataset ({src.env} {src.dataset})"
        )
    cfg.max_iters, cfg.num_steps_per_iter = src.max_iters, src.num_steps_per_iter
    return ckpt


@dataclass
class OnlinePhase:
    """What the online rounds use of the run (built by run/experiment.py)."""

    cfg: RunConfig
    ctx: DistContext
    dataset: object  # the offline TrajectoryDataset
    max_ep_len: int
    scale: float
    trainer: object  # training/odt_trainer.ODTTrainer
    batches: RankBatches
    np_rng: np.random.Generator
    eval_fns: list[Callable]
    targets: list[float]
    # train(iteration, steps) -> logs, or None when training diverged (reported already)
    train: Callable[[int, int], dict | None]
    # log(iteration, step, logs): rank 0's metrics row
    log: Callable[[int, int, dict], None]
    # save(iteration, extra checkpoint entries): the checkpoint after an iteration
    save: Callable[[int, dict], None]


def online_rtg(cfg: RunConfig, targets: list[float]) -> float:
    return cfg.online_rtg if cfg.online_rtg is not None else default_online_rtg(cfg.env, targets)


def round_seeds(cfg: RunConfig, iteration: int) -> list[int]:
    """Env seeds of a round's episodes, apart from evaluation's (``seed * 100000 + i``)."""
    ss = np.random.SeedSequence([cfg.seed, iteration, 22])
    return [int(s) for s in ss.generate_state(cfg.online_episodes) % (2**31)]


def exploration_generator(cfg: RunConfig, rank: int, iteration: int) -> torch.Generator:
    g = torch.Generator(device=cfg.device)
    g.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, iteration, 22]).generate_state(1)[0]))
    return g


def gather_paths(ctx: DistContext, paths: list[dict]) -> list[dict]:
    """Every rank's episodes in rank order, on every rank (the replicated buffer)."""
    if ctx.world_size == 1:
        return paths
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, paths)
    return [p for part in parts for p in part]


def run_online(o: OnlinePhase, ckpt: dict | None) -> dict | None:
    """The online rounds not yet done; the last round's logs (None if training diverged)."""
    cfg, ctx = o.cfg, o.ctx
    buffer = TrajectoryReplayBuffer.from_dataset(o.dataset, cfg.buffer_size, cfg.mode)
    state = (ckpt or {}).get("online")
    first, env_steps = 0, 0
    if state is not None:  # resuming inside the online phase
        buffer.load_state_dict(state["buffer"])
        first, env_steps = int(state["round"]), int(state["env_steps"])
    rtg = online_rtg(cfg, o.targets)
    logs: dict = {}
    for r in range(first, cfg.online_rounds):
        it = cfg.max_iters + r
        seed_iteration(cfg.seed, ctx.rank, it, o.np_rng)
        mine = ctx.share(round_seeds(cfg, it))
        paths: list[dict] = []
        if mine:
            model = unwrap(o.trainer.model)
            episodes = EvalEpisodes(
                cfg.env, cfg.mode, True, o.dataset.state_mean, o.dataset.state_std,
                cfg.device, rtg,
            )  # fmt: skip
            gen = exploration_generator(cfg, ctx.rank, it)
            paths, _, _ = collect_batched(episodes, model, mine, cfg.eval_envs, gen)
        paths = gather_paths(ctx, paths)
        returns = np.array([float(p["rewards"].sum(dtype=np.float64)) for p in paths])
        lengths = np.array([len(p["rewards"]) for p in paths])
        buffer.add(paths)
        env_steps += int(lengths.sum())
        o.batches.sampler = buffer.sampler(
            cfg.K, o.max_ep_len, o.scale, cfg.device, segment_len=cfg.segment_len
        )
        o.batches._drawn = None
        evaluate = (r + 1) % cfg.online_eval_every == 0 or r + 1 == cfg.online_rounds
        o.trainer.eval_fns = o.eval_fns if evaluate else []
        logs = o.train(it, cfg.online_updates)
        if logs is None:
            return None
        logs.update(
            {
                "online/round": r + 1,
                "online/env_steps": env_steps,
                "online/collected_return_mean": float(returns.mean()),
                "online/collected_return_max": float(returns.max()),
                "online/collected_length_mean": float(lengths.mean()),
                "online/buffer_trajectories": len(buffer),
                "online/buffer_return_max": float(buffer.returns.max()),
                "online/rtg": rtg,
            }
        )
        if ctx.is_main:
            print(
                f"online round {r + 1}/{cfg.online_rounds}: {env_steps} env steps, collected "
                f"return {returns.mean():.1f} (max {returns.max():.1f}), temperature "
                f"{logs.get('training/temperature', float('nan')):.4g}, entropy "
                f"{logs.get('training/entropy', float('nan')):.4g}",
                flush=True,
            )
        o.log(it + 1, o.trainer.global_step, logs)
        online = {"round": r + 1, "env_steps": env_steps, "buffer": buffer.state_dict()}
        o.save(it + 1, {"online": online})
    return logs
