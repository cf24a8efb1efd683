"""FSDP2 (``--fsdp``): parameters, gradients and AdamW states sharded across ranks.

Each transformer block is sharded on its own (its weights are gathered just for its forward and
backward), then the root takes what is left (embeddings, heads, final norm). On several nodes the
mesh is 2-D (HSDP): each node shards the model over its own GPUs and the nodes hold replicas, so
the per-block all-gathers and reduce-scatters stay inside a node and only the all-reduce of the
gradient shards crosses the network. Evaluation plays the sharded model itself (see
:func:`shard_model`). Checkpoints go through
``torch.distributed.checkpoint``: every rank writes its shards into ``{out_dir}/dcp-NNNNNN`` and
any world size can read them back; rank 0 also gathers a consolidated ``checkpoint.pt`` (full
weights and optimizer) that evaluate.py and a one-process ``--resume`` read.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from types import MethodType

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
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
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

from ..models.factory import transformer_blocks
from .paths import WriteError

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def mesh_shape(world_size: int, local_world_size: int) -> tuple[int, ...]:
    """``(world_size,)``: one flat FSDP mesh; ``(nodes, gpus_per_node)``: HSDP, when torchrun
    runs several nodes of the same size with more than one GPU each."""
    if 1 < local_world_size < world_size and world_size % local_world_size == 0:
        return (world_size // local_world_size, local_world_size)
    return (world_size,)


def describe_mesh(world_size: int, local_world_size: int) -> str:
    """The one line the run prints at start about how FSDP spreads the model."""
    shape = mesh_shape(world_size, local_world_size)
    if len(shape) == 2:
        return (
            f"FSDP: HSDP over {shape[0]} nodes x {shape[1]} processes: each node shards the "
            "model over its processes, nodes keep replicas (only the all-reduce of gradient "
            "shards crosses the network)"
        )
    nodes = -(-world_size // max(local_world_size, 1))
    where = "one node" if nodes == 1 else f"{nodes} nodes of unequal size or one process each"
    return f"FSDP: parameters sharded over all {world_size} processes ({where})"


def mixed_precision(bf16: bool, root: bool) -> MixedPrecisionPolicy:
    """Under bf16 the blocks' weights are gathered and used in bf16 and gradients reduced in
    fp32; the sharded master weights and AdamW stay fp32. Inputs are not cast: the residual
    stream between blocks stays fp32 as under DDP (autocast casts each matmul's inputs, and
    the fused RMSNorm takes the fp32 stream with a bf16 weight). The root (embeddings, heads,
    final norm: a small share of the weights) keeps fp32 parameters, so it computes exactly
    what DDP's autocast computes."""
    if not bf16:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(
        param_dtype=None if root else torch.bfloat16,
        reduce_dtype=torch.float32,
        cast_forward_inputs=False,
    )


def shard_model(
    model: torch.nn.Module, bf16: bool, device_type: str, local_world_size: int = 0
) -> torch.nn.Module:
    """Shard ``model`` in place, per block then the root, over every rank's ``device_type``
    (each block moves there as it is sharded), on the mesh :func:`mesh_shape` gives.

    Evaluation calls the sharded model directly: under ``no_grad`` each block gathers its
    weights for its forward and frees them after (``reshard_after_forward``), so a rank never
    holds more than the root and a block or two beyond its shards; ``act_step`` (the cached
    rollout step, which reaches the root's embeddings without ``forward``) is registered to
    gather like a forward. Every rank must then make the same number of model calls (see
    evaluate_episodes.evaluate_batched's ``still_running``).

    A multi-task model (models/multitask.py) is sharded the same way: the shared backbone's
    blocks each on their own, and every task's own parts (state and action embeddings, heads,
    action bounds) with the root, in its one all-gather and one reduce-scatter a step. Not one
    unit per task: FSDP2 gathers a unit's weights in the hooks of that module's forward, and a
    task's parts are never called as one module (their layers run inside the root's forward),
    nor at all in a step whose rows hold none of that task, so such a unit would not gather and
    would not reduce-scatter on a rank that holds no row of it while another rank does
    (mismatched collectives). Nor replicated outside FSDP (``ignored_params``): FSDP does not
    reduce their gradients, so the ranks' copies would drift apart. With the root, every rank
    gathers and reduces the same parameters every step whatever its rows hold (FSDP reduces
    only parameters that have a gradient; the model gives absent tasks' parts a zero one)."""
    world = dist.get_world_size()
    shape = mesh_shape(world, local_world_size or world)
    names = ("replicate", "shard") if len(shape) == 2 else ("shard",)
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=names)
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mixed_precision(bf16, root=False))
    fully_shard(model, mesh=mesh, mp_policy=mixed_precision(bf16, root=True))
    if hasattr(model, "act_step"):
        register_fsdp_forward_method(model, "act_step")
    reduce_scatter_every_micro_step(model)
    return model


def reduce_scatter_every_micro_step(model: FSDPModule) -> None:
    """Gradient accumulation under FSDP reduces every micro-step, as torchtitan does.

    The trainer turns gradient sync off on inner micro-steps (for DDP's ``no_sync``, whose
    gradients are full-size anyway). FSDP2 would then keep an unsharded fp32 gradient of every
    parameter on every rank until the last micro-step: 4 bytes a parameter, more than the
    sharded weights, gradients and AdamW together on 8 GPUs. So this model ignores the request:
    each micro-step's backward reduce-scatters (under HSDP also all-reduces across nodes) and
    adds into the gradient shards. (HSDP could defer its all-reduce across nodes to the last
    micro-step with ``set_requires_all_reduce``, holding shard-sized partial sums meanwhile;
    not done yet: it saves network time only, which no GPU here could measure.)"""

    def set_requires_gradient_sync(self, requires_gradient_sync: bool, *, recurse=True) -> None:
        pass

    model.set_requires_gradient_sync = MethodType(set_requires_gradient_sync, model)


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


@contextlib.contextmanager
def evaluating(model: FSDPModule):
    """Evaluation on the sharded model itself.

    The backbones' cached step calls each block's ``forward`` directly (so that a compiled
    block stays eager there), which skips the module hooks through which FSDP gathers a
    block's weights. For the evaluation each block's ``forward`` gathers and frees them itself
    (through a module call the hooks run as well and the second gather is a no-op); training's
    forward is restored after, as is the root's sharding, which FSDP keeps gathered after a
    forward for the backward that follows in training.

    The root's own parameters (embeddings, heads) are gathered here for the whole evaluation:
    a multi-task model acts through each task's view (``task_model``), which calls the root's
    submodules without the root's forward hooks. A single-task model's first call would gather
    them anyway and, the root never resharding after forward, keep them so to the end."""
    blocks = transformer_blocks(model)
    own = [block.__dict__.get("forward") for block in blocks]  # e.g. activation checkpointing's
    for block in blocks:
        register_fsdp_forward_method(block, "forward")
    model.unshard()
    try:
        yield model
    finally:
        for block, forward in zip(blocks, own, strict=True):
            if forward is None:
                del block.forward
            else:
                block.forward = forward
        model.reshard()


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
    """Every rank writes its shards of weights and optimizer; returns the folder's name. A
    shard file a rank cannot write (a full disk, a file that cannot be replaced) is a
    :class:`WriteError` naming it, on every rank: DCP tells all ranks of any rank's failure."""
    name = f"dcp-{iteration:06d}"
    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(out_dir / name))
    except CheckpointException as e:
        failed = [(r, err) for r, (err, _) in e.failures.items() if isinstance(err, OSError)]
        if not failed:
            raise
        _, error = min(failed, key=lambda f: f[0])
        raise WriteError(error.filename or out_dir / name, error) from None
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
