"""A run's state and its checkpoint format, in one place: :class:`RunState`.

checkpoint.pt is ``RunState.state_dict()``; ``--resume`` and ``--init_from`` give it back through
``RunState.load_state_dict()``; best.pt is ``RunState.best_state_dict()``. The files a user names
are read by :func:`~.checkpoint.read_run_checkpoint`, which checks them for what each use needs
(``--resume``, ``--init_from``: also when ``resolve`` takes the offline phase's length from
them; evaluate.py). The keys are those every earlier version wrote:

    model, optimizer          full weights and the --optimizer's state (AdamW's or LAMB's;
                              an FSDP run: optimizer keyed by parameter name,
                              optimizer_format "fqn"; with
                              --consolidate_checkpoint false only "dcp", the sharded folder)
    temperature, temperature_optimizer   the stochastic head's entropy temperature (ODT)
    selection                 best.pt's criterion and best value so far (offline iterations
                              and online rounds)
    online                    the online phase: round, env steps and replay buffer
    scheduler, rng, iteration the schedule, every generator, iterations done
    state_mean, state_std, config, eval_targets, wandb_id   what evaluate.py and wandb need
                              (a multi-task run, --tasks: state_mean, state_std and
                              eval_targets are dicts keyed by task name)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (
    CheckpointError,
    changed_flags,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, RunConfig, model_flags_fix
from .parallel import Parallel
from .paths import BEST_NAME, CHECKPOINT_NAME, WriteError, writing

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
    "export",  # what happens after the run, not the run
    "compile",
    "data_dir",
    "env_targets",
    "return_kappa",  # how --env_targets auto picks its returns: evaluation, not training
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


def unfit_checkpoint(path: Path, error: Exception) -> CheckpointError:
    """A readable checkpoint whose tensors or states do not load into this run's model."""
    return CheckpointError(
        f"--resume: {path} does not fit this run's model ({str(error).splitlines()[0]}); "
        "resume with the original flags or start afresh"
    )


def load_full_weights(model: torch.nn.Module, ckpt: dict) -> None:
    """A checkpoint's full weights into a model built from its config (evaluate.py)."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            "the weights do not fit the model the checkpoint's config describes: "
            f"{first if len(first) <= 160 else first[:157] + '...'}"
        ) from None


def check_resumable(cfg: RunConfig, ckpt: dict) -> None:
    """--resume: the checkpoint's run had the same flags (those that may change aside)."""
    # A decaying schedule's length is max_iters x num_steps_per_iter: extending the run
    # would stretch the part already walked and jump the learning rate back up.
    fixed = {"max_iters"} if cfg.lr_decay != "none" else set()
    free = (RESUMABLE_CHANGES - fixed) | {"params", "backbone_params"}
    changed = changed_flags(settled_selection(cfg, ckpt["config"]), cfg.to_dict(), free)
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


def settled_selection(cfg: RunConfig, saved: dict) -> dict:
    """A checkpoint's config with its ``select_by`` as today's rules settle it. Runs with
    --val_episodes recorded the ``val_error`` default even with online rounds, before online
    rounds were ranked by return (which made them unresumable: ``val_error`` is now refused
    with --online_rounds and no longer the default there). Such a run resumes with no
    ``--select_by``: best.pt stays the offline iteration the validation error chose."""
    if saved.get("select_by") != "val_error" or not cfg.online_rounds or cfg.select_by:
        return saved
    print(
        "warning: this run began when an online run's best.pt followed the validation error; "
        "its online rounds are not ranked (best.pt keeps the offline choice): rank them by "
        "--select_by return@TARGET in a new run",
        file=sys.stderr,
    )
    return {**saved, "select_by": None}


def check_init_fits(cfg: RunConfig, ckpt: dict, state_mean, state_std) -> None:
    """--init_from: an offline stochastic run with this run's model flags and dataset."""
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
    # Dropout and the context acting uses may differ (neither is a weight); everything else
    # shapes or defines the model.
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


def as_tensors(stats: np.ndarray | dict) -> torch.Tensor | dict:
    """State statistics as the checkpoint holds them: one tensor, or (a multi-task run) one per
    task keyed by its name."""
    if isinstance(stats, dict):
        return {name: torch.from_numpy(v) for name, v in stats.items()}
    return torch.from_numpy(stats)


class RunState:
    """Everything a checkpoint holds of a run: the model (through the run's :class:`Parallel`),
    optimizer, schedule, generators, the trainer's own state, best-so-far selection, the online
    phase's buffer, and what evaluation reads (state statistics, config, targets). The run sets
    the parts as it builds them; only this class turns them into a checkpoint and back."""

    def __init__(
        self, cfg: RunConfig, parallel: Parallel, out_dir: Path, stats: tuple, targets: list
    ):
        self.cfg, self.parallel, self.out_dir = cfg, parallel, Path(out_dir)
        self.state_mean, self.state_std = stats
        self.targets = targets
        self.np_rng = np.random.default_rng(cfg.seed)
        self.model: torch.nn.Module | None = None  # the training model (wrapped)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.trainer = None  # training/trainer.Trainer: its extra_state()
        self.selection = None  # run/selection.Selection, or None
        self.online = None  # run/online.OnlineRounds, or None
        self.wandb_id: str | None = None

    @property
    def path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def about(self) -> dict:
        """What evaluate.py needs beside the weights."""
        return {
            "state_mean": as_tensors(self.state_mean),
            "state_std": as_tensors(self.state_std),
            "config": self.cfg.to_dict(),
            # max/pNN targets need the dataset to resolve; evaluate.py reads them here
            "eval_targets": self.targets,
        }

    def state_dict(self, iteration: int) -> dict:
        """checkpoint.pt after ``iteration``. Collective under FSDP (every rank writes its
        shards); complete on rank 0, the one that writes it."""
        state = self.parallel.full_state(self.model, self.optimizer, self.out_dir, iteration)
        state.update(self.trainer.extra_state())
        if iteration > self.cfg.max_iters:  # an online round
            state["online"] = self.online.state_dict()
        if self.selection is not None:  # only runs that validate or select carry the key
            state["selection"] = self.selection.state_dict()
        state.update(
            scheduler=self.scheduler.state_dict(),
            rng=rng_state(self.np_rng),
            iteration=iteration,
            **self.about(),
            wandb_id=self.wandb_id,
        )
        return state

    def best_state_dict(self, state: dict) -> dict:
        """best.pt: the weights of ``state``'s iteration with what evaluate.py needs (no
        optimizer or RNG states: it is for evaluation; resume reads checkpoint.pt)."""
        return {
            "model": state["model"],
            "iteration": state["iteration"],
            **self.about(),
            "selection": self.selection.state_dict(),
        }

    def save(self, iteration: int, best: bool = False, failed: WriteError | None = None) -> None:
        """checkpoint.pt (and with ``best`` first best.pt) after ``iteration``, atomically (see
        run/checkpoint.py). Every rank calls it; rank 0 writes, and a failed write (a full disk;
        or ``failed``, rank 0's earlier write of this iteration) is a :class:`WriteError` on
        every rank, the previous checkpoint left as it was."""
        ctx = self.parallel.ctx
        with writing(self.out_dir):  # FSDP: every rank writes its shards here
            state = self.state_dict(iteration)
        if ctx.is_main and failed is None:
            try:
                if best:
                    with writing(self.out_dir / BEST_NAME):
                        save_checkpoint(self.out_dir / BEST_NAME, self.best_state_dict(state))
                with writing(self.path):
                    save_checkpoint(self.path, state)
                self.parallel.saved(self.out_dir, state)
            except WriteError as e:
                failed = e
        # Every rank waits for rank 0's write and learns whether it failed.
        if ctx.any_rank(failed is not None, self.cfg.device):
            raise failed or WriteError(self.path, OSError(0, "rank 0 could not write it"))

    def load_weights(self, model: torch.nn.Module, ckpt: dict, path: Path) -> None:
        """The checkpoint's full weights into the freshly built model (before it is wrapped)."""
        if "model" in ckpt:
            try:
                model.load_state_dict(ckpt["model"])
            except (RuntimeError, TypeError) as e:
                raise unfit_checkpoint(path, e) from None
        elif not self.parallel.shards:
            raise ConfigError(
                f"--resume: {path} holds no consolidated weights (written with "
                "--consolidate_checkpoint false): resume it with --fsdp under torchrun"
            )

    def load_state_dict(self, ckpt: dict, path: Path) -> int:
        """Everything but the weights' full copy (loaded by :meth:`load_weights`) from a
        checkpoint: the iteration it was written after."""
        fused = all(p.is_cuda for p in self.model.parameters()) or None  # as the optimizer's
        try:
            for group in ckpt.get("optimizer", {}).get("param_groups", []):
                if "fused" in group:  # AdamW's (LAMB has no kernel choice)
                    group["fused"] = fused  # a CPU run's checkpoint on CUDA too
            self.parallel.load(ckpt, self.out_dir, self.model, self.optimizer)
            self.scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"], self.np_rng)
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise unfit_checkpoint(path, e) from None
        self.trainer.load_extra_state(ckpt)
        resumed = self.cfg.resume  # an --init_from checkpoint is another run's
        if resumed and self.selection is not None and "selection" in ckpt:
            self.selection.load_state_dict(ckpt["selection"])
        if resumed and self.online is not None and "online" in ckpt:
            self.online.load_state_dict(ckpt["online"])
        if resumed:
            self.wandb_id = ckpt.get("wandb_id")
        return int(ckpt["iteration"])
