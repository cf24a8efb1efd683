"""Several processes training one model (``torchrun``): roles, reductions, model surgery.

A plain ``python experiment.py`` is a world of one and every helper here is then a no-op. Under
``torchrun`` every rank trains (DDP by default, FSDP2 with ``--fsdp``: see run/parallel.py),
every rank evaluates its share of the episodes, and rank 0 alone logs and writes checkpoints.
How each step's batch is cut across ranks is run/batches.py.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import sys
import time
from dataclasses import dataclass
from types import MethodType

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from ..models.factory import transformer_blocks

# Heads the original DT defines but its action loss never reaches. They are frozen (see
# freeze_untrained_heads), so DDP never waits for their gradients, which is what
# find_unused_parameters=True would otherwise search the graph for on every step.
UNTRAINED_PARAMS = ("predict_state.", "predict_return.")


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
    def described(cls) -> DistContext:
        """The world ``torchrun`` describes in the environment, without joining it (what
        resolve() records in the config before any process group exists)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        return cls(
            int(os.environ["RANK"]),
            world_size,
            int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        )

    @classmethod
    def from_env(cls, device: str, timeout_minutes: float = 60.0) -> DistContext:
        """Join the process group ``torchrun`` describes in the environment (a world of one
        without it). The device is chosen before the group starts, so NCCL binds each rank to
        its own GPU; the timeout bounds how long ranks wait for rank 0's checkpoint write."""
        ctx = cls.described()
        if ctx.world_size == 1:
            return ctx
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
        # A multi-task model's per-task heads are tasks.<i>.predict_state. and so on.
        if name.startswith(UNTRAINED_PARAMS) or any(f".{h}" in name for h in UNTRAINED_PARAMS):
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
