"""FSDP2 (``--fsdp``): parameters, gradients and AdamW states sharded across ranks.

Each transformer block is sharded on its own (its weights are gathered just for its forward and
backward), then the root takes what is left (embeddings, heads, final norm). Checkpoints go through
``torch.distributed.checkpoint``: every rank writes its shards into ``{out_dir}/dcp-NNNNNN`` and
any world size can read them back; rank 0 also gathers a consolidated ``checkpoint.pt`` (full
weights and optimizer) that evaluate.py and a one-process ``--resume`` read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..models.factory import transformer_blocks

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: torch.nn.Module, bf16: bool, device_type: str) -> torch.nn.Module:
    """Shard ``model`` in place, per block then the root, over every rank's ``device_type``
    (each block moves there as it is sharded). Under bf16 the blocks compute in bf16 and
    gradients are reduced in fp32 (the sharded master weights and AdamW stay fp32)."""
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def fill_from_rank0(model: torch.nn.Module, full_state: dict, device: str) -> None:
    """Give every rank its shards of rank 0's weights and buffers. The other ranks built the
    model on the meta device: their storage is allocated here, shard-sized."""
    if dist.get_rank() != 0:
        model.to_empty(device=device)
    set_model_state_dict(
        model,
        full_state,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )


def is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def full_model_state(model: torch.nn.Module) -> dict:
    """Gathered weights on every rank's CPU (collective: every rank calls it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def consolidated_state(model, optimizer) -> tuple[dict, dict]:
    """Full model and optimizer states gathered on rank 0's CPU (empty on other ranks); the
    optimizer's is keyed by parameter name, which :func:`load_full_optimizer` reads back."""
    return (
        get_model_state_dict(model, options=FULL),
        get_optimizer_state_dict(model, optimizer, options=FULL),
    )


def load_full_optimizer(model, optimizer, state: dict) -> None:
    """Load a name-keyed full optimizer state (written by an FSDP run) into any model."""
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def save_sharded(out_dir: Path, iteration: int, model, optimizer) -> str:
    """Every rank writes its shards of weights and optimizer; returns the folder's name."""
    name = f"dcp-{iteration:06d}"
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(out_dir / name))
    return name


def load_sharded(path: Path, model, optimizer) -> None:
    """Read sharded weights and optimizer written with any world size into this sharding."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def drop_old_shards(out_dir: Path, keep: str) -> None:
    """Remove sharded checkpoints other than ``keep`` (after checkpoint.pt points at it)."""
    for d in out_dir.glob("dcp-*"):
        if d.name != keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
