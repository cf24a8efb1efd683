"""One training run as one object: :class:`Run`, built from a resolved :class:`RunConfig`.

The run owns everything it trains with (inputs, model, optimizer, schedule, batches, trainer,
evaluation, validation, selection, metrics, its folder) and its phases are methods that read
``self``::

    Run(cfg)                      join torchrun's group (a world of one without it), pick the
                                  parallelism (run/parallel.py)
    .execute()
      .setup()                    inputs (run/inputs.py), the checkpoint to start from,
                                  model -> Parallel.wrap -> optimizer, trainer, batches,
                                  evaluation, validation, online rounds; RunState.load_state_dict
      .iteration(it) for each     (an online round collects first) -> train -> validate and
                                  evaluate -> metrics row, selection -> RunState.save
      .finish()                   summary, close

Offline iterations and online rounds are one loop: iteration ``max_iters + r`` is online round
``r``. Everything a checkpoint holds goes through :class:`RunState` (run/state.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import replace
from functools import partial

import numpy as np
import torch

from ..data.holdout import held_out_count, validation_batches
from ..data.sampler import BatchSampler, top_trajectories
from ..errors import UserError, one_line
from ..models.pretrained import is_model_source
from ..training.act_trainer import ActTrainer
from ..training.odt_trainer import ODTTrainer
from ..training.optimizers import build_optimizer
from ..training.seq_trainer import SequenceTrainer
from ..training.trainer import PROGRESS_INTERVAL, NonFiniteError, Trainer, TrainerOptions
from ..training.validation import ValidationSet
from .batches import RankBatches
from .checkpoint import read_run_checkpoint, seed_iteration
from .config import ConfigError, RunConfig, resolve_targets
from .distributed import DistContext
from .evaluation import Evaluation, enable_tf32, format_target, target_key
from .export import export_run, init_from_folder
from .inputs import RunData, load_data, make_selection
from .metrics import MetricsLog
from .online import OnlineRounds, target_entropy
from .parallel import make_parallel
from .paths import (
    BEST_NAME,
    PathError,
    RunDirLock,
    WriteError,
    cause,
    kept_after_failure,
    open_run_folder,
    writing,
)
from .state import RunState, check_init_fits, check_resumable


def lr_factor(step: int, warmup: int, total: int, decay: str, online_warmup: int = 0) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps. Offline (``step < total``, the
    offline phase's steps): linear warmup over ``warmup``, then constant or a cosine down to a
    tenth at ``total`` (annealing averages out action noise a constant rate keeps chasing).

    The online phase (steps from ``total`` on) has its own schedule, the ODT reference's linear
    warmup then constant, never the cosine (which has ended there): with ``online_warmup`` N
    > 0, a warmup over the first N online steps, then the peak; with 0, the run's own warmup
    continued (the reference's one schedule over both phases: the peak once ``warmup`` steps
    are done). A function of the step count alone, so a resumed run continues it exactly."""
    if step >= total:
        if online_warmup:
            return min((step - total + 1) / online_warmup, 1.0)
        decay = "none"
    if step < warmup:
        return (step + 1) / warmup
    if decay == "none" or total <= warmup:
        return 1.0
    progress = min((step - warmup) / (total - warmup), 1.0)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def use_fused_adamw(model: torch.nn.Module) -> bool:
    """AdamW's fused kernel (one launch for all parameters) when every parameter is on CUDA; on
    CPU the default for-each path, so CPU runs keep their exact results."""
    return all(p.is_cuda for p in model.parameters())


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
    schedule = partial(
        lr_factor,
        warmup=cfg.warmup_steps,
        total=total,
        decay=cfg.lr_decay,
        online_warmup=cfg.online_warmup_steps,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def action_mse(s_hat, a_hat, r_hat, s, a, r) -> torch.Tensor:
    """BC's loss (ActTrainer's ``loss_fn``): the mean squared error of the last action."""
    return torch.mean((a_hat - a) ** 2)


class Run:
    """One run (training, validation, evaluation, checkpoints) of ``cfg``, which is final:
    nothing here changes it."""

    def __init__(self, cfg: RunConfig, ctx: DistContext | None = None):
        self.cfg = cfg
        # ctx: a world other than torchrun's (tests build a one-process run inside a rank).
        self.ctx = ctx or DistContext.from_env(cfg.device, cfg.dist_timeout)
        self.parallel = make_parallel(cfg, self.ctx)
        self.metrics: MetricsLog | None = None  # rank 0's
        self.online: OnlineRounds | None = None
        self.validation: ValidationSet | None = None
        self.evaluation: Evaluation | None = None
        self.start_iter = 0
        self.saved: int | None = None  # the iteration of the checkpoint on disk, if any
        self.init_weights: dict | None = None  # --init_from FOLDER|REPO_ID's

    # --- the run, top to bottom ------------------------------------------------------------

    def execute(self) -> int:
        """The run's exit code: 0, or 1 when training diverged (reported)."""
        # One process trains in a run folder at a time: rank 0 holds its lock (see RunDirLock).
        with RunDirLock(self.cfg.out_dir, enabled=self.ctx.is_main) as lock:
            self.setup(lock)
            try:
                logs = self.loop()
            except WriteError as e:
                if self.ctx.is_main:
                    print(f"error: {e}; {self.kept()}", file=sys.stderr)
                logs = None
            if logs is None:
                self.ctx.close()
                return 1
            self.finish(logs)
        return 0

    def loop(self) -> dict | None:
        """Every iteration not yet done; the last one's logs, None if training diverged."""
        logs: dict = {}
        for it in range(self.start_iter, self.cfg.max_iters + self.cfg.online_rounds):
            logs = self.iteration(it)
            if logs is None:
                return None
            self.saved = it + 1
        return logs

    def kept(self) -> str:
        """What a run stopped mid-way leaves to continue from."""
        return kept_after_failure(self.data.ckpt_path, self.saved)

    def setup(self, lock: RunDirLock) -> None:
        """Everything the loop needs, the checks of every input first."""
        cfg, ctx = self.cfg, self.ctx
        data, selection = self.load_inputs()
        resumed = self.read_resume()
        start = resumed or self.read_init()
        enable_tf32(cfg.device)
        if ctx.is_main:
            self.announce(data, resumed)
        self.build(selection, start)
        if start is not None:
            self.start_iter = self.state.load_state_dict(start, data.ckpt_path)
            self.saved = self.start_iter if cfg.resume else None
            self.announce_start(start)
        if ctx.is_main:
            self.open_folder(lock)
        self.batches.start_at(cfg.steps_after(self.start_iter))
        self.trainer.global_step = cfg.steps_after(self.start_iter)

    def iteration(self, it: int) -> dict | None:
        """Iteration ``it`` (0-based): an online round collects first; then training, validation,
        evaluation, the metrics row and the checkpoint. None if training diverged."""
        online = it >= self.cfg.max_iters
        collected = {}
        if online:
            collected = self.online.collect(it, self.model, self.batches, self.state.np_rng)
        steps = self.cfg.online_updates if online else self.cfg.num_steps_per_iter
        trained = self.train(it, steps)
        if trained is None:
            return None
        logs = self.assess(trained, evaluate=not online or self.online.evaluates(it))
        if self.ctx.is_main:
            print_logs(it + 1, logs)
        logs["training/global_batch_size"] = self.cfg.global_batch_size
        logs.update(collected)
        if online and self.ctx.is_main:
            print(self.online.report(logs), flush=True)
        self.record(it + 1, logs, online)
        return logs

    def finish(self, logs: dict) -> None:
        if self.ctx.is_main:
            self.summarize(logs)
            self.metrics.close()
            if self.cfg.export:
                self.export_model()
        self.ctx.close()

    def summarize(self, logs: dict) -> None:
        print_summary(self.data.dataset, self.targets, logs, self.state.selection)

    def export_model(self) -> None:
        """The run's model as a model folder in ``{out_dir}/model`` (run/export.py): best.pt's
        weights when the run kept a best, else the last; its card takes the run's own
        evaluation of them. A run whose checkpoint cannot be exported (e.g. sharded weights
        only) still succeeded: one line says so and how to export later."""
        out_dir = self.data.out_dir
        which = "best" if (out_dir / BEST_NAME).is_file() else "last"
        try:
            folder = export_run(out_dir, out_dir / "model", which, reuse_run_evaluation=True)
        except UserError as e:
            print(f"warning: no model folder written ({one_line(e)}); export the run later "
                  "with export.py", file=sys.stderr)  # fmt: skip
            return
        print(f"model folder ({which} checkpoint): {folder}")

    # --- setup -----------------------------------------------------------------------------

    def load_inputs(self):
        """The dataset and env (every input checked), the evaluation targets, and what best.pt
        selects by; the inputs and the selection."""
        cfg = self.cfg
        self.data = data = load_data(cfg, self.ctx)
        self.targets = resolve_targets(cfg.env_targets, data.dataset.returns, data.spec.env_targets)
        return data, make_selection(cfg, data, self.targets)

    def read_resume(self) -> dict | None:
        """With --resume, the run's own checkpoint, checked to come from the same flags."""
        if not self.cfg.resume:
            return None
        ckpt = read_run_checkpoint(self.data.ckpt_path, "resume")
        check_resumable(self.cfg, ckpt)
        if self.cfg.init_from and is_model_source(self.cfg.init_from):
            # Fine-tuning a model folder normalises with its statistics, which the checkpoint
            # recorded: no network on resume, and the same numbers as before the stop.
            self.use_state_stats(ckpt["state_mean"].numpy(), ckpt["state_std"].numpy())
        return ckpt

    def read_init(self) -> dict | None:
        """--init_from (not on --resume, which continues from the run's own checkpoint): the
        offline checkpoint whose state stands for this run's offline iterations."""
        cfg = self.cfg
        if not cfg.init_from or cfg.resume:
            return None
        if is_model_source(cfg.init_from):  # weights and statistics only: iteration 0
            ds = self.data.dataset
            weights, mean, std = init_from_folder(
                cfg, cfg.init_from, ds.state_dim, ds.actions.shape[1], self.data.spec.max_ep_len
            )
            self.init_weights = weights
            self.use_state_stats(mean, std)
            return None
        ckpt = read_run_checkpoint(cfg.init_from, "init")
        dataset = self.data.dataset
        check_init_fits(cfg, ckpt, dataset.state_mean, dataset.state_std)
        return ckpt

    def use_state_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Normalise states (training batches, validation, evaluation, collection) with these
        statistics rather than the dataset's: those a fine-tuned model folder was trained with."""
        if mean.shape != self.data.dataset.state_mean.shape or std.shape != mean.shape:
            raise ConfigError(
                f"--init_from: state statistics of shape {mean.shape} for {self.cfg.env}'s "
                f"{self.data.dataset.state_mean.shape}: not a model for this env"
            )
        self.data.dataset = replace(self.data.dataset, state_mean=mean, state_std=std)

    def state_stats(self) -> tuple:
        """The state mean and std evaluation normalises with, as the checkpoint records them."""
        return (self.data.dataset.state_mean, self.data.dataset.state_std)

    def build(self, selection=None, start: dict | None = None) -> None:
        """The run's state (run/state.py), model (with ``start``'s weights) and everything that
        trains and assesses it, from the inputs :meth:`load_inputs` read."""
        data = self.data
        stats = self.state_stats()
        self.state = RunState(self.cfg, self.parallel, data.out_dir, stats, self.targets)
        self.state.selection = selection
        self.build_model(start)
        self.build_training()

    def build_model(self, start: dict | None) -> None:
        """The model with its starting weights (fresh, a Qwen3 backbone's, or the checkpoint's),
        placed and wrapped by the run's parallelism."""
        cfg, data = self.cfg, self.data
        # The same initial weights on every rank (FSDP shards them in place; DDP broadcasts).
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        # Only rank 0 holds real weights before DDP or FSDP starts; the others build shapes on
        # the meta device (no memory) and receive rank 0's weights. Loading into meta parameters
        # reads no tensors, so every rank still checks the same inputs. Rank 0 builds on CPU,
        # then moves: the weights a seed gives do not depend on the device.
        meta = torch.device("meta") if self.parallel.on_meta else contextlib.nullcontext()
        with meta:
            model = data.build_model(cfg)
        init_backbone = cfg.qwen.init_backbone if cfg.qwen is not None else None
        if init_backbone and start is None:
            from ..models.decision_transformer_qwen3 import load_backbone_from_pretrained

            try:
                load_backbone_from_pretrained(model, init_backbone)
            except (ValueError, FileNotFoundError) as e:
                raise ConfigError(f"--init_backbone: {e}") from None
        if start is not None:
            self.state.load_weights(model, start, data.ckpt_path)
        elif self.init_weights is not None:
            model.load_state_dict(self.init_weights)  # checked to be this model's
        model = self.parallel.place(model)
        if self.ctx.is_main:
            print(
                f"model: {type(model).__name__}, {cfg.params:,} parameters "
                f"({cfg.backbone_params:,} in the backbone)"
            )
        self.model = self.state.model = self.parallel.wrap(model)

    def build_training(self) -> None:
        """Optimizer and schedule, batches, trainer, validation, evaluation, online rounds."""
        cfg, ctx, data = self.cfg, self.ctx, self.data
        state = self.state
        state.optimizer, state.scheduler = make_optimizer(cfg, self.model)
        self.batches = self.make_batches(state.np_rng)
        self.trainer = state.trainer = self.make_trainer()
        self.validation = self.make_validation()
        if cfg.num_eval_episodes > 0:
            self.evaluation = self.make_evaluation()
        if cfg.online_rounds:
            self.online = OnlineRounds(
                cfg, ctx, data.dataset, data.spec, self.targets, data.train_episodes
            )
            state.online = self.online

    def make_evaluation(self) -> Evaluation:
        """Every target's episodes after each iteration (run/evaluation.py)."""
        stats = (self.data.dataset.state_mean, self.data.dataset.state_std)
        return Evaluation(self.cfg, stats, self.targets, self.ctx, self.parallel.lockstep)

    def make_batches(self, np_rng: np.random.Generator) -> RankBatches:
        """This rank's share of each optimizer step's batch (see run/batches.py)."""
        cfg, data = self.cfg, self.data
        spec = data.spec
        episodes = top_trajectories(data.dataset, cfg.pct_traj, data.train_episodes)
        sampler = BatchSampler(
            data.dataset, cfg.K, spec.max_ep_len, spec.scale, cfg.device, np_rng,
            segment_len=cfg.segment_len, episodes=episodes,
        )  # fmt: skip
        per_token = cfg.model_type == "dt"
        return RankBatches(
            sampler, cfg.seed, self.ctx, cfg.batch_size, cfg.grad_accum_steps, per_token
        )

    def trainer_options(self) -> TrainerOptions:
        cfg = self.cfg
        return TrainerOptions(
            autocast_dtype=torch.bfloat16 if cfg.dtype == "bf16" else None,
            grad_accum_steps=cfg.grad_accum_steps,
            progress=self.ctx.is_main,
            # Seconds between progress lines in redirected output (no bar there).
            progress_interval=float(os.environ.get("DT_PROGRESS_SECONDS", PROGRESS_INTERVAL)),
            return_loss_weight=cfg.return_loss_weight,
        )

    def make_trainer(self) -> Trainer:
        cfg = self.cfg
        options = self.trainer_options()
        args = (self.model, self.state.optimizer, self.batches, action_mse, self.state.scheduler)
        if cfg.policy == "stochastic":
            scale = self.parallel.module(self.model).action_scale
            return ODTTrainer(
                *args, options, self.ctx,
                target_entropy=target_entropy(cfg, scale),
                init_temperature=cfg.init_temperature,
                temperature_lr=cfg.temperature_lr,
            )  # fmt: skip
        trainer_cls = SequenceTrainer if cfg.model_type == "dt" else ActTrainer
        return trainer_cls(*args, options, self.ctx)

    def make_validation(self) -> ValidationSet | None:
        """With --val_episodes: the validation error on fixed windows of the held-out episodes,
        drawn once from (seed) and built on the device now (see training/validation.py)."""
        cfg, ctx, data = self.cfg, self.ctx, self.data
        if data.val_episodes is None:
            return None
        check_val_windows(cfg, ctx)
        spec = data.spec
        sampler = BatchSampler(
            data.dataset, cfg.K, spec.max_ep_len, spec.scale, cfg.device,
            segment_len=cfg.segment_len, episodes=data.val_episodes,
        )  # fmt: skip
        batches = validation_batches(
            sampler, cfg.val_windows, cfg.seed, cfg.batch_size, ctx.rank, ctx.world_size
        )
        return ValidationSet(batches, cfg.model_type == "dt", ctx)

    def open_folder(self, lock: RunDirLock) -> None:
        """Rank 0: the run folder (locked) with this run's config.json, and its metrics log."""
        out_dir = self.data.out_dir
        open_run_folder(out_dir, lock, self.cfg.to_dict())
        try:
            self.metrics = MetricsLog(out_dir, self.cfg.to_dict(), wandb_id=self.state.wandb_id)
            self.metrics.truncate(self.start_iter)
        except OSError as e:
            where = out_dir / "metrics.jsonl"
            raise PathError(f"--out_dir {out_dir}: cannot write {where}: {cause(e)}") from None
        self.state.wandb_id = self.metrics.wandb_id

    def announce(self, data: RunData, resumed: dict | None) -> None:
        cfg = self.cfg
        dataset = data.dataset
        print("=" * 50)
        print(f"Starting new experiment: {cfg.env} {cfg.dataset}")
        print(dataset.summary())
        if cfg.val_episodes:
            print(
                f"validation: {held_out_count(cfg.val_episodes, len(dataset.lengths))} episodes "
                f"held out (--val_episodes {cfg.val_episodes}), {cfg.val_windows} fixed windows; "
                f"best.pt by {cfg.select_by or 'nothing (no --select_by)'}"
            )
        elif cfg.select_by:
            print(f"best.pt by {cfg.select_by}")
        print("=" * 50)
        self.announce_scale(resumed)

    def announce_scale(self, resumed: dict | None) -> None:
        """The global batch, how the model is spread over the processes, and a change of
        their number on resume."""
        cfg, ctx = self.cfg, self.ctx
        print(
            f"global batch: {cfg.global_batch_size} windows per optimizer step "
            f"(batch_size {cfg.batch_size} x {ctx.world_size} processes x "
            f"{cfg.grad_accum_steps} accumulation steps){self.parallel.name}"
        )
        mesh = self.parallel.describe()
        if mesh:
            print(mesh)
        saved = RunConfig.from_dict(resumed["config"]) if resumed is not None else None
        if saved is not None and saved.world_size != ctx.world_size:
            old = saved.global_batch_size or cfg.batch_size
            print(
                f"resuming with {ctx.world_size} processes instead of {saved.world_size}: the "
                f"global batch is {cfg.global_batch_size} instead of {old} windows, each step's "
                f"draw cut in {ctx.world_size} per-rank slices"
            )

    def announce_start(self, start: dict) -> None:
        if not self.ctx.is_main:
            return
        if self.cfg.resume:
            print(f"resuming {self.data.out_dir} after iteration {start['iteration']}")
        else:
            print(f"starting from {self.cfg.init_from} (after its iteration {start['iteration']})")

    # --- one iteration ---------------------------------------------------------------------

    def train(self, it: int, num_steps: int) -> dict | None:
        """Iteration ``it``'s training steps; None if it diverged (reported)."""
        # Dropout and any other draw restart from (seed, rank, iteration): a resumed run and one
        # that never stopped see the same noise, whatever each rank saved.
        seed_iteration(self.cfg.seed, self.ctx.rank, it, self.state.np_rng)
        try:
            return self.trainer.train_iteration(num_steps, iter_num=it + 1)
        except NonFiniteError as e:
            # Checkpoints are written only after an iteration whose every step passed the
            # guard, so the one on disk (if any) is the last good one.
            kept = (
                f"the last good checkpoint {self.data.ckpt_path} (iteration {it}) is kept"
                if self.saved is not None
                else "no checkpoint was written"
            )
            print(
                f"error: training diverged in iteration {it + 1}: {e}; {kept}. "
                "Lower --learning_rate or check the dataset.",
                file=sys.stderr,
            )
            return None

    def assess(self, trained: dict, evaluate: bool) -> dict:
        """Validation and (when ``evaluate``) evaluation of the model just trained, in eval mode
        and the run's autocast; the iteration's logs in the order metrics.jsonl has them."""
        logs = {"time/training": trained.pop("time/training")}
        start = time.time()
        self.model.eval()
        with self.trainer.autocast():
            if self.validation is not None:
                logs.update(self.validate())
            if evaluate and self.evaluation is not None:
                # Under FSDP the sharded model itself, each block gathered for its forward only
                # (the ranks play in lockstep), not a full copy of the weights on every rank.
                with self.parallel.evaluating(self.model):
                    for k, v in self.evaluation(self.model).items():
                        logs[f"evaluation/{k}"] = v
        logs["time/total"] = time.time() - self.trainer.start_time
        logs["time/evaluation"] = time.time() - start
        logs.update(trained)
        return logs

    def validate(self) -> dict:
        """The validation error of the model just trained (eval mode, the run's autocast)."""
        return self.validation(self.parallel.module(self.model))

    def record(self, iteration: int, logs: dict, online: bool) -> None:
        """Rank 0's metrics row and best-so-far check (an ``online`` round competes when it was
        evaluated), then the checkpoint (every rank: FSDP writes shards from each)."""
        best = False
        failed = None
        if self.ctx.is_main:
            try:
                with writing(self.metrics.path):
                    self.metrics.log(iteration, self.cfg.steps_after(iteration), logs)
            except WriteError as e:
                failed = e
            selection = self.state.selection
            best = selection is not None and selection.observe(iteration, logs, online)
        self.state.save(iteration, best=best, failed=failed)


def check_val_windows(cfg: RunConfig, ctx: DistContext) -> None:
    """Every rank needs windows of its own (FSDP: as many forward calls on each)."""
    if cfg.val_windows < 2 * ctx.world_size:
        raise ConfigError(
            f"--val_windows {cfg.val_windows} is too few for {ctx.world_size} processes: "
            f"use at least {2 * ctx.world_size}"
        )


def print_logs(iteration: int, logs: dict) -> None:
    print("=" * 80)
    print(f"Iteration {iteration}")
    for k, v in logs.items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")


def print_summary(dataset, targets: list[float], logs: dict, selection=None) -> None:
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
            print(f"achieved return at target {format_target(t)}: {logs[key]:.1f} ± {std:.1f}")
    print_best(selection)


def print_best(selection) -> None:
    """Which iteration best.pt keeps, when the run kept one."""
    if selection is not None and selection.best_iteration is not None:
        print(
            f"best.pt: iteration {selection.best_iteration} by {selection.criterion} "
            f"({selection.best_value:.6g})"
        )
