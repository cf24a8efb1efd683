"""Several processes training one model (``torchrun``): roles, wrapping, batches, reductions.

A plain ``python experiment.py`` is a world of one and every helper here is then a no-op. Under
``torchrun`` every rank trains (DDP by default, FSDP2 with ``--fsdp``), every rank evaluates its
share of the episodes, and rank 0 alone logs and writes checkpoints.

Batches are a pure function of ``(seed, step)``: each optimizer step draws the indices of the
whole global batch (``batch_size x world_size x grad_accum_steps`` windows) from a generator
seeded by ``(seed, step)``, and rank r / micro-step m builds only its slice. So ranks never draw
the same windows, ``--resume`` is exact without saving any sampler state, and a run with one
process and the global batch sees the very windows a multi-process run sees (the tests rely on
it).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import inspect
import os
import sys
import time
from dataclasses import dataclass
from types import MethodType

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from ..data.sampler import BatchSampler
from ..models.factory import transformer_blocks

# Heads the original DT defines but its action loss never reaches. They are frozen (see
# freeze_untrained_heads), so DDP never waits for their gradients, which is what
# find_unused_parameters=True would otherwise search the graph for on every step.
UNTRAINED_PARAMS = ("predict_state.", "predict_return.")

# Test-only hook: "RANK:STEP" makes that rank's batch at that optimizer step NaN (tests use it to
# check that a non-finite loss on one rank stops every rank). Never set it in real runs.
NAN_TEST_ENV = "DT_TEST_NAN_AT"


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str, timeout_minutes: float = 60.0) -> DistContext:
        """Join the process group ``torchrun`` describes in the environment (a world of one
        without it). The device is chosen before the group starts, so NCCL binds each rank to
        its own GPU; the timeout bounds how long ranks wait for rank 0's checkpoint write."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        ctx = cls(
            int(os.environ["RANK"]),
            world_size,
            int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        )
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(ctx.local_rank)
        if not dist.is_initialized():
            # torch.distributed.nn.functional takes `group.WORLD` as a default argument when
            # first imported (DDP imports it through torch._dynamo). Imported after the group
            # exists, its functions would hold the group until the interpreter exits, so
            # destroy_process_group could not stop gloo's threads, and tearing them down during
            # interpreter exit aborts a rank now and then ("terminate called without an active
            # exception", exit -6). Imported first, it binds None.
            importlib.import_module("torch.distributed.nn.functional")
            dist.init_process_group(
                "nccl" if cuda else "gloo",
                timeout=datetime.timedelta(minutes=timeout_minutes),
            )
        return ctx

    def device(self, device: str) -> str:
        """Any CUDA device string names this rank's local GPU under torchrun."""
        if self.world_size > 1 and device.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return device

    def wrap(
        self,
        model: torch.nn.Module,
        fsdp: bool = False,
        bf16: bool = False,
        device: str = "cpu",
        bf16_grads: bool = False,
    ):
        """DDP (or FSDP2 with ``fsdp``, which moves the model to ``device`` block by block)
        around ``model``; the model itself in a world of one. DDP starts every rank from rank
        0's weights and buffers (the other ranks may hold uninitialised storage: see
        experiment.build_policy); ``bf16_grads`` all-reduces its gradients in bf16."""
        if self.world_size == 1:
            return model
        if fsdp:
            from .fsdp import shard_model

            return shard_model(model, bf16, torch.device(device).type, self.local_world_size)
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
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
                bf16_compress_hook,
            )

            # Each gradient bucket is cast to bf16, all-reduced, divided by the world size and
            # cast back: half the bytes on the wire, gradients rounded to 8 mantissa bits.
            # (DDP refuses this hook by its name unless NCCL runs on CUDA; gloo reduces bf16
            # too, so on CPU it is registered under another name.)
            def bf16_grads_hook(state, bucket):
                return bf16_compress_hook(state, bucket)

            hook = bf16_compress_hook if device.type == "cuda" else bf16_grads_hook
            wrapped.register_comm_hook(dist.group.WORLD, hook)
        return wrapped

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (the trainer sums [loss, non-finite flag] in one call)."""
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any_rank(self, flag: bool, device: str | torch.device) -> bool:
        """Whether ``flag`` holds on any rank (collective: every rank calls it; ``device`` is
        where this rank's backend reduces, its GPU under NCCL)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    @contextlib.contextmanager
    def local_rank_first(self):
        """The body runs on each node's local rank 0 first, then on the node's other ranks
        (after a barrier): one process per node downloads or reads a dataset into the shared
        store or page cache while the others wait. A failure on local rank 0 still releases
        the others, which then meet the same error themselves instead of hanging."""
        first = self.local_rank == 0
        if not first:
            self.barrier()
        try:
            yield
        finally:
            if first:
                self.barrier()

    def all_reduce_min(self, t: torch.Tensor) -> torch.Tensor:
        """Minimum over ranks (e.g. of an ``ok`` flag as float: every rank decides alike)."""
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def gather_episodes(self, values: np.ndarray) -> np.ndarray:
        """Concatenate every rank's per-episode values in rank order (each rank passes its
        contiguous share, see :meth:`share`), so all ranks end with the seed-ordered whole."""
        if self.world_size == 1:
            return values
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, np.asarray(values).tolist())
        return np.array([v for part in parts for v in part])

    def share(self, items: list) -> list:
        """This rank's contiguous slice of ``items`` (sizes differ by at most one)."""
        n, w = len(items), self.world_size
        lo, hi = self.rank * n // w, (self.rank + 1) * n // w
        return items[lo:hi]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            # Every rank reaches here before any tears its connections down: a gloo peer whose
            # partner already closed can abort at exit (seen once in a 2-rank FSDP resume).
            dist.barrier()
            gloo = dist.get_backend() == "gloo"
            release_dtensor_caches()
            dist.destroy_process_group()
            if gloo:
                # A gloo worker thread drops a collective's tensors after marking it done, and
                # dropping a tensor Python made takes the GIL. Freeing the group (when the run's
                # model goes) joins those threads with the GIL held, so a worker still dropping
                # the barrier's tensors would deadlock it (seen: ~1 run in 20). Sleeping frees
                # the GIL and lets them finish first.
                time.sleep(0.1)


# DTensor's caches whose entries hold a device mesh, and through it the process group:
# (module, object in it, method that empties it).
DTENSOR_CACHES = (
    ("torch.distributed.tensor", "DTensor._op_dispatcher.sharding_propagator"
     ".propagate_op_sharding", "cache_clear"),
    ("torch._C", "_clear_DTensor_sharding_propagator_cache", "__call__"),
    ("torch.distributed.tensor._redistribute", "clear_redistribute_planner_cache", "__call__"),
    ("torch.distributed.tensor._redistribute", "_gen_transform_infos", "cache_clear"),
    ("torch.distributed.tensor._collective_utils", "MeshTopoInfo.build_from_mesh", "cache_clear"),
)  # fmt: skip


def release_dtensor_caches() -> None:
    """Empty DTensor's caches. After FSDP2 has run they hold the device mesh, and with it the
    process group, for the life of the process, so destroy_process_group would leave gloo's
    threads running into interpreter exit (see DistContext.from_env for why that matters).
    They are torch's private caches: one a torch version lacks is skipped."""
    if "torch.distributed.tensor" not in sys.modules:  # nothing of DTensor was ever loaded
        return
    for module, path, method in DTENSOR_CACHES:
        with contextlib.suppress(ImportError, AttributeError):
            obj = importlib.import_module(module)
            for name in path.split("."):
                obj = getattr(obj, name)
            getattr(obj, method)()


def freeze_untrained_heads(model: torch.nn.Module) -> None:
    """Take the state and return heads out of autograd: the action loss never reached them, so
    training is unchanged (AdamW skipped them for lack of a gradient), but DDP and FSDP now see
    a model every parameter of which gets a gradient on every step."""
    for name, p in model.named_parameters():
        if name.startswith(UNTRAINED_PARAMS):
            p.requires_grad_(False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel (FSDP2 shards in place: nothing to unwrap)."""
    return getattr(model, "module", model)


def apply_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each transformer block's activations in backward instead of keeping them.

    The block's forward is swapped on the instance (its parameters and state-dict names stay), so
    checkpoints and FSDP's per-block sharding see the same module. Returns the blocks wrapped."""
    blocks = transformer_blocks(model)
    for block in blocks:
        inner = block.forward

        def forward(self, *args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            # Non-reentrant: works with kwargs, autocast and FSDP hooks, and restores the RNG so
            # the recomputed dropout masks equal the first pass's.
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = MethodType(forward, block)
    return len(blocks)


class RankBatches:
    """``get_batch`` for the trainer: each call is the next micro-batch of this rank.

    Call ``c`` (counted from the run's start) belongs to optimizer step ``c // accum`` and
    micro-step ``c % accum``; the step's global draw is sliced at position
    ``(rank * accum + micro) * batch_size``. ``weight`` (read after each call) is this
    micro-batch's share of the step's real action tokens times ``world_size * accum``: scaling
    the micro-batch's masked-mean loss by it makes the averaged gradient that of the global
    batch's masked mean, whatever the padding in each slice.
    """

    def __init__(
        self,
        sampler: BatchSampler,
        seed: int,
        ctx: DistContext,
        batch_size: int,
        accum: int,
        per_token: bool,
    ):
        self.sampler, self.seed, self.ctx = sampler, seed, ctx
        self.batch_size, self.accum, self.per_token = batch_size, accum, per_token
        self.calls = 0
        self.weight = 1.0
        self._drawn: tuple | None = None
        rank_step = os.environ.get(NAN_TEST_ENV)
        self.nan_at = tuple(map(int, rank_step.split(":"))) if rank_step else None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.ctx.world_size * self.accum

    def start_at(self, step: int) -> None:
        """Continue from optimizer step ``step`` (on resume)."""
        self.calls = step * self.accum

    def __call__(self, batch_size: int | None = None, max_len: int | None = None):
        step, micro = divmod(self.calls, self.accum)
        self.calls += 1
        if self._drawn is None or self._drawn[0] != step:  # once per step, not per micro-step
            self.sampler.rng = np.random.default_rng([self.seed, step])
            ep, si = self.sampler.draw(self.global_batch)
            real = np.minimum(self.sampler.segment_len, self.sampler.ds.lengths[ep] - si)
            self._drawn = (step, ep, si, real)
        _, ep, si, real = self._drawn
        lo = (self.ctx.rank * self.accum + micro) * self.batch_size
        mine = slice(lo, lo + self.batch_size)
        if self.per_token:
            self.weight = float(real[mine].sum()) * self.ctx.world_size * self.accum / real.sum()
        batch = self.sampler.build(ep[mine], si[mine], max_len or self.sampler.segment_len)
        if self.nan_at == (self.ctx.rank, step):
            batch[0].fill_(float("nan"))
        return batch
