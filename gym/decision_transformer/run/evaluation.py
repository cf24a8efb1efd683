"""A run's evaluation: every target's episodes, played the same way after each iteration and by
evaluate.py on a checkpoint (same seeds, same functions), so both report the same numbers.

Under torchrun every rank plays its contiguous share of the seeds and the returns are gathered
in seed order on all ranks. With a sharded model (``lockstep``) every call is a collective: every
rank plays as many seeds (a short share is padded with replays whose results are dropped) and
steps until no rank has an episode running, so all make the same number of model calls.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.scores import reference_scores
from ..evaluation.evaluate_episodes import (
    EvalEpisodes,
    StepHook,
    evaluate_batched,
    play_one_by_one,
)
from ..models.return_bins import AUTO_TARGET
from .config import RunConfig
from .distributed import DistContext, unwrap


def episode_seeds(seed: int, num_episodes: int) -> list[int]:
    """Evaluation episode i of a run always starts from the same env seed, so iterations compare
    like with like and evaluate.py can replay a run's evaluation."""
    return [seed * 100_000 + i for i in range(num_episodes)]


def format_target(target: float | str) -> str:
    """A target as tables and metric keys show it: ``3600``, or ``auto``."""
    return target if isinstance(target, str) else f"{target:g}"


def target_key(target: float | str) -> str:
    """``target_3600``; ``--env_targets auto`` is its own row, ``target_auto``."""
    return f"target_{format_target(target)}"


def is_auto(target: float | str | None) -> bool:
    return target == AUTO_TARGET


def reference_scores_for(cfg: RunConfig) -> tuple[float, float] | None:
    return reference_scores(cfg.env, cfg.dataset)


def enable_tf32(device: str) -> None:
    """fp32 matmuls and convolutions on CUDA in TF32 (10-bit mantissa inputs, fp32 accumulation):
    the tensor cores' fp32 path, several times faster than IEEE fp32 on Ampere and later. bf16 runs
    are unaffected. Never on CPU, whose results stay exactly as they were."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def summarize_returns(
    target: float | str,
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
    stats: tuple[np.ndarray, np.ndarray],
    target: float | str,
    seeds: list[int],
    progress: bool = False,
    on_step: StepHook | None = None,
    still_running: Callable[[bool], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of one episode per seed, batched or one by one as ``eval_envs`` says;
    ``stats`` are the state mean and std the policy normalises with. ``on_step`` watches the
    episode of ``seeds[0]`` (see evaluate_episodes). With ``still_running`` (ranks in lockstep)
    episodes always go through the batched evaluator, one env at a time when ``eval_envs`` is 1
    (the same returns as one by one)."""
    episodes = EvalEpisodes(
        env=cfg.env,
        state_mean=stats[0],
        state_std=stats[1],
        target=target,
        mode=cfg.mode,
        conditioned=cfg.model_type == "dt",
        device=next(model.parameters()).device,
        return_kappa=cfg.return_kappa,
    )
    # disable=None: a bar on a terminal, nothing in logs and captured output.
    bar = tqdm(
        total=len(seeds),
        desc=f"evaluating target {format_target(target)}",
        unit="episode",
        leave=False,
        disable=None if progress else True,
    )
    if cfg.eval_envs > 1 or still_running is not None:
        out = evaluate_batched(
            episodes, model, seeds, max(cfg.eval_envs, 1), on_step, bar.update, still_running
        )
    else:
        out = play_one_by_one(episodes, model, seeds, on_step, bar.update)
    bar.close()
    return out


class Evaluation:
    """Every target's episodes on this rank's share of the seeds, gathered on every rank.

    ``stats``: the dataset's state mean and std (what the policy normalises with)."""

    def __init__(
        self,
        cfg: RunConfig,
        stats: tuple[np.ndarray, np.ndarray],
        targets: list[float],
        ctx: DistContext | None = None,
        lockstep: bool = False,
    ):
        self.cfg, self.targets, self.lockstep = cfg, targets, lockstep
        self.stats = stats
        self.ctx = ctx or DistContext()
        self.seeds = episode_seeds(cfg.seed, cfg.num_eval_episodes)
        self.ref = reference_scores_for(cfg)

    def __call__(self, model: torch.nn.Module) -> dict:
        """Every target's numbers, keyed as in metrics.jsonl without 'evaluation/'."""
        out: dict = {}
        for target in self.targets:
            out.update(self.target(model, target))
        return out

    def target(
        self, model: torch.nn.Module, target: float, on_step: StepHook | None = None
    ) -> dict:
        """One target's numbers; ``on_step`` watches the episode of the first seed (one
        process: evaluate.py's --video)."""
        model = unwrap(model)
        ctx, seeds = self.ctx, self.seeds
        mine = ctx.share(seeds)
        still_running = None
        played = mine
        if self.lockstep:
            longest = -(-len(seeds) // ctx.world_size)
            played = mine + (mine or seeds)[-1:] * (longest - len(mine))
            device = next(model.parameters()).device
            still_running = partial(ctx.any_rank, device=device)
        returns, lengths = np.zeros(0), np.zeros(0)
        if played:
            returns, lengths = evaluate_returns(
                self.cfg, model, self.stats, target, played, ctx.is_main, on_step, still_running,
            )  # fmt: skip
        returns, lengths = returns[: len(mine)], lengths[: len(mine)]
        returns, lengths = ctx.gather_episodes(returns), ctx.gather_episodes(lengths)
        return summarize_returns(target, returns, lengths, self.ref)
