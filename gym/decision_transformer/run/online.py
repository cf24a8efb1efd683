"""The online phase of a run: the Online Decision Transformer's rounds (Zheng et al., 2022).

After the offline iterations (or from ``--init_from``'s checkpoint), round ``r`` is iteration
``max_iters + r`` of the run and does, in order:

1. collect ``--online_episodes`` episodes with the stochastic policy, sampled, conditioned on
   ``--online_rtg``, through the evaluators' batched rollout core (several envs, one model call
   per step, the DT's rolling key/value cache in ``--attention window``);
2. add them to the replay buffer (``data/replay_buffer.py``: first the best offline
   trajectories among those offline training draws from, i.e. without the --val_episodes
   held out and within --pct_traj; then FIFO; returns-to-go relabelled with the returns
   achieved);
3. take ``--online_updates`` guarded gradient steps on windows drawn from the buffer;
4. evaluate (every ``--online_eval_every`` rounds and after the last), log a metrics row,
   update best.pt's selection (``--select_by return@TARGET``: an evaluated round competes with
   every iteration before it) and write the checkpoint, which holds the buffer, the round, the
   env steps and the selection.

The learning rate of the online updates follows the online phase's own schedule (run/run.py
``lr_factor``): the reference's linear warmup then constant, never the offline cosine.

Everything random in a round is a function of ``(seed, rank, iteration)``: collection's env
seeds and its sampling generator, and (through the trainer) the batches and dropout. With the
buffer restored from the checkpoint, ``--resume`` after a kill replays the interrupted round
exactly.

Under torchrun each rank plays its contiguous share of a round's episodes; the episodes are
gathered in rank order and every rank adds all of them, so the buffer is replicated and equal on
every rank (and each optimizer step's global batch is cut from one draw, as offline).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ..data.replay_buffer import TrajectoryReplayBuffer
from ..data.sampler import top_trajectories
from ..envs import default_online_rtg
from ..evaluation.collect import collect_batched
from ..evaluation.evaluate_episodes import EvalEpisodes
from ..models.policy_heads import default_target_entropy, unit_box_entropy_to_env
from .batches import RankBatches
from .checkpoint import seed_iteration
from .config import RunConfig
from .distributed import DistContext, unwrap


def target_entropy(cfg: RunConfig, action_scale: torch.Tensor) -> float:
    """The entropy target in env units: ``--target_entropy`` (unit-box convention) or the
    ODT's ``-act_dim`` carried to the env's box (models/policy_heads.py)."""
    if cfg.target_entropy is None:
        return default_target_entropy(action_scale.cpu())
    return unit_box_entropy_to_env(cfg.target_entropy, action_scale.cpu())


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


class OnlineRounds:
    """The online phase's own state (replay buffer, rounds done, env steps) and its collection
    step; the run's loop calls :meth:`collect` at the start of each online iteration, then trains
    on the batches it points at the buffer. ``dataset``: the offline TrajectoryDataset;
    ``train_episodes``: those not held out by --val_episodes (None: all of them)."""

    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext,
        dataset,
        spec,
        targets: list[float],
        train_episodes: np.ndarray | None = None,
    ):
        self.cfg, self.ctx, self.dataset, self.spec = cfg, ctx, dataset, spec
        # The buffer starts from what offline training draws from: the training episodes, cut
        # to --pct_traj, never the held-out ones validation/action_error is measured on.
        offline = top_trajectories(dataset, cfg.pct_traj, train_episodes)
        self.buffer = TrajectoryReplayBuffer.from_dataset(
            dataset, cfg.buffer_size, cfg.mode, episodes=offline
        )
        self.rounds, self.env_steps = 0, 0
        self.rtg = online_rtg(cfg, targets)

    def state_dict(self) -> dict:
        buffer = self.buffer.state_dict()
        return {"round": self.rounds, "env_steps": self.env_steps, "buffer": buffer}

    def load_state_dict(self, state: dict) -> None:
        """Resuming inside the online phase."""
        self.buffer.load_state_dict(state["buffer"])
        self.rounds, self.env_steps = int(state["round"]), int(state["env_steps"])

    def evaluates(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (0-based) of the run, an online round, is evaluated:
        every --online_eval_every rounds and the last."""
        r = iteration - self.cfg.max_iters
        return (r + 1) % self.cfg.online_eval_every == 0 or r + 1 == self.cfg.online_rounds

    def collect(self, iteration: int, model: torch.nn.Module, batches: RankBatches, np_rng) -> dict:
        """Round ``iteration - max_iters``: play this rank's share of its episodes with the
        stochastic policy, add every rank's to the buffer, point ``batches`` at the buffer.
        Returns the round's logs."""
        cfg, ctx = self.cfg, self.ctx
        seed_iteration(cfg.seed, ctx.rank, iteration, np_rng)
        mine = ctx.share(round_seeds(cfg, iteration))
        paths: list[dict] = []
        if mine:
            d = self.dataset
            episodes = EvalEpisodes(
                cfg.env, d.state_mean, d.state_std, self.rtg, cfg.mode, device=cfg.device
            )
            gen = exploration_generator(cfg, ctx.rank, iteration)
            paths, _, _ = collect_batched(episodes, unwrap(model), mine, cfg.eval_envs, gen)
        paths = gather_paths(ctx, paths)
        returns = np.array([float(p["rewards"].sum(dtype=np.float64)) for p in paths])
        lengths = np.array([len(p["rewards"]) for p in paths])
        self.buffer.add(paths)
        self.env_steps += int(lengths.sum())
        self.rounds = iteration - cfg.max_iters + 1
        sampler = self.buffer.sampler(
            cfg.K, self.spec.max_ep_len, self.spec.scale, cfg.device, segment_len=cfg.segment_len
        )
        batches.use_sampler(sampler)
        return {
            "online/round": self.rounds,
            "online/env_steps": self.env_steps,
            "online/collected_return_mean": float(returns.mean()),
            "online/collected_return_max": float(returns.max()),
            "online/collected_length_mean": float(lengths.mean()),
            "online/buffer_trajectories": len(self.buffer),
            "online/buffer_return_max": float(self.buffer.returns.max()),
            "online/rtg": self.rtg,
        }

    def report(self, logs: dict) -> str:
        """The line rank 0 prints after a round."""
        cfg = self.cfg
        return (
            f"online round {self.rounds}/{cfg.online_rounds}: {self.env_steps} env steps, "
            f"collected return {logs['online/collected_return_mean']:.1f} (max "
            f"{logs['online/collected_return_max']:.1f}), temperature "
            f"{logs.get('training/temperature', float('nan')):.4g}, entropy "
            f"{logs.get('training/entropy', float('nan')):.4g}"
        )
