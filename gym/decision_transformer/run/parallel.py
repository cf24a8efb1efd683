"""How the run's model is spread over processes, behind one interface: :class:`Parallel`.

One process, DDP and FSDP2 are three subclasses with the same five duties: build the model where
its weights go (:meth:`Parallel.place`), wrap it for training (freezing what never trains,
activation checkpointing and regional compilation are applied here too), give its full state
for a checkpoint, load a checkpoint's state back, and evaluate with it. The run never asks which
one it has; :func:`make_parallel` picks it from the config and the process group.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from pathlib import Path

import torch
import torch.distributed as dist

from ..models.factory import transformer_blocks
from .config import RunConfig
from .distributed import (
    DistContext,
    apply_activation_checkpointing,
    freeze_untrained_heads,
    unwrap,
)


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


class Parallel:
    """One process: the model itself trains, its state dict is the checkpoint's."""

    # Ranks must make the same number of model calls in evaluation (every call a collective).
    lockstep = False
    # Whether checkpoints hold sharded weights (a dcp-* folder) that this mode can read.
    shards = False
    name = ""  # appended to the run's global-batch line

    def __init__(self, cfg: RunConfig, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx

    @property
    def on_meta(self) -> bool:
        """Whether this rank builds the model's shapes only (rank 0's weights arrive later)."""
        return self.ctx.world_size > 1 and not self.ctx.is_main

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The freshly built (or loaded) model moved to where this rank trains it."""
        return model.to(self.cfg.device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Freeze what never trains, checkpoint and compile blocks if asked, then distribute."""
        freeze_untrained_heads(model)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(model)
        if self.cfg.compile:
            compile_regions(model)
        return self.distribute(model)

    def distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model inside the training wrapper (its state-dict names are the checkpoint's)."""
        return unwrap(model)

    def full_state(self, model, optimizer, out_dir: Path, iteration: int) -> dict:
        """The weights and optimizer part of checkpoint.pt (rank 0's is the one written)."""
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}

    def load(self, ckpt: dict, out_dir: Path, model, optimizer) -> None:
        """The optimizer state (sharded runs: and the weights) of a checkpoint of any mode."""
        if ckpt.get("optimizer_format") == "fqn":  # written by an FSDP run
            fsdp_helpers().load_full_optimizer(model, optimizer, ckpt["optimizer"])
        else:
            optimizer.load_state_dict(ckpt["optimizer"])

    def saved(self, out_dir: Path, state: dict) -> None:
        """Rank 0, after checkpoint.pt is on disk: what the previous one left can go."""

    def evaluating(self, model: torch.nn.Module):
        """Context under which evaluation plays ``model`` (the training model itself)."""
        return contextlib.nullcontext(model)

    def describe(self) -> str | None:
        return None


class DDP(Parallel):
    """DistributedDataParallel: every rank holds the whole model, gradients are all-reduced.
    Ranks other than 0 build it on the meta device and receive rank 0's weights when DDP is
    built; ``--ddp_bf16_grads`` all-reduces the gradients in bf16."""

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.on_meta:
            return model.to_empty(device=self.cfg.device)  # storage for rank 0's broadcast
        return model.to(self.cfg.device)

    def distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        return wrap_ddp(model, self.cfg.ddp_bf16_grads)


def wrap_ddp(model: torch.nn.Module, bf16_grads: bool = False) -> torch.nn.Module:
    """``model`` in DistributedDataParallel on the device its parameters are on, rank 0's
    weights and buffers broadcast to every rank (the Atari half's trainer wraps its model here
    too); ``bf16_grads``: all-reduce the gradients in bf16 (``--ddp_bf16_grads``)."""
    device = next(model.parameters()).device
    ddp = torch.nn.parallel.DistributedDataParallel
    # Buffers (action bounds, RoPE tables) are equal on every rank and never change: no
    # broadcast before each forward. Newer torch renamed the flag (and deprecated the old);
    # the new one still broadcasts them once at construction, which ranks built on the meta
    # device rely on (the old one skipped that, so it is given only when the new is absent).
    sync_flag = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    wrapped = ddp(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **{sync_flag: False},
    )
    if sync_flag == "broadcast_buffers":
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    if bf16_grads:
        register_bf16_grads(wrapped, device)
    return wrapped


def register_bf16_grads(wrapped, device: torch.device) -> None:
    """Each gradient bucket cast to bf16, all-reduced, divided by the world size and cast back:
    half the bytes on the wire, gradients rounded to 8 mantissa bits. (DDP refuses this hook by
    its name unless NCCL runs on CUDA; gloo reduces bf16 too, so on CPU it is registered under
    another name.)"""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

    def bf16_grads_hook(state, bucket):
        return bf16_compress_hook(state, bucket)

    hook = bf16_compress_hook if device.type == "cuda" else bf16_grads_hook
    wrapped.register_comm_hook(dist.group.WORLD, hook)


class FSDP(Parallel):
    """FSDP2: each block's weights, gradients and AdamW states sharded over the ranks (see
    run/fsdp.py). Rank 0 builds the real weights, the others shapes on the meta device; sharding
    moves each block to the device and fills every rank's shards from rank 0's. Checkpoints are
    the sharded ``dcp-NNNNNN`` folder plus, with --consolidate_checkpoint, full weights and a
    name-keyed optimizer state gathered on rank 0. Evaluation plays the sharded model itself, the
    ranks in lockstep."""

    lockstep = True
    shards = True
    name = ", FSDP"

    def __init__(self, cfg: RunConfig, ctx: DistContext):
        super().__init__(cfg, ctx)
        self.fsdp = fsdp_helpers()

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # sharding moves each block to the device: the whole model is never there

    def distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        # Taken before sharding: FSDP2 replaces the parameters (the optimizer must hold those).
        full_state = model.state_dict() if self.ctx.is_main else {}
        device_type = torch.device(self.cfg.device).type
        bf16 = self.cfg.dtype == "bf16"
        model = self.fsdp.shard_model(model, bf16, device_type, self.ctx.local_world_size)
        self.fsdp.fill_from_rank0(model, full_state, self.cfg.device)
        return model

    def full_state(self, model, optimizer, out_dir: Path, iteration: int) -> dict:
        """Collective: every rank writes its shards, then (with --consolidate_checkpoint) rank 0
        gathers the full weights and optimizer."""
        out_dir.mkdir(parents=True, exist_ok=True)
        states = {"dcp": self.fsdp.save_sharded(out_dir, iteration, model, optimizer)}
        if self.cfg.consolidate_checkpoint:
            model_sd, optim_sd = self.fsdp.consolidated_state(model, optimizer)
            states.update(model=model_sd, optimizer=optim_sd, optimizer_format="fqn")
        return states

    def load(self, ckpt: dict, out_dir: Path, model, optimizer) -> None:
        if "dcp" in ckpt:
            self.fsdp.load_sharded(out_dir / ckpt["dcp"], model, optimizer)
        else:
            super().load(ckpt, out_dir, model, optimizer)

    def saved(self, out_dir: Path, state: dict) -> None:
        self.fsdp.drop_old_shards(out_dir, state["dcp"])

    def evaluating(self, model: torch.nn.Module):
        return self.fsdp.evaluating(model)

    def describe(self) -> str | None:
        return self.fsdp.describe_mesh(self.ctx.world_size, self.ctx.local_world_size)


def fsdp_helpers():
    """run/fsdp.py, imported on first use only: runs that never shard never load torch's FSDP
    and distributed-checkpoint packages (seconds of start-up)."""
    return importlib.import_module(f"{__package__}.fsdp")


def make_parallel(cfg: RunConfig, ctx: DistContext) -> Parallel:
    """One process, DDP, or FSDP2 (``--fsdp`` under torchrun)."""
    if ctx.world_size == 1:
        return Parallel(cfg, ctx)
    return FSDP(cfg, ctx) if cfg.fsdp else DDP(cfg, ctx)
