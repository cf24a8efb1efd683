"""Count what makes the host wait for the device during a training step, on any machine.

A host-device synchronisation stalls Python until the GPU has drained its queue, so the next
kernels cannot be queued behind the running ones. On CUDA, ``torch.cuda.set_sync_debug_mode``
reports them; on a CPU there is no device to wait for, so :class:`HostSyncCounter` recognises the
patterns that would wait on CUDA:

* reading a value: ``item``/``bool``/``float`` (``aten._local_scalar_dense``), ``tolist``,
  ``numpy``, ``cpu``;
* a data-dependent output size: ``nonzero``, ``masked_select``, boolean-mask indexing;
* a blocking copy to or from the device: ``to``/``cuda``/``copy_`` without ``non_blocking=True``,
  or a host-to-device copy from pageable (unpinned) memory, which CUDA stages synchronously.

With ``fake_cuda=True`` copies to ``cuda`` stay on the CPU and ``pin_memory`` only marks its
tensor, so code written for a CUDA device (the sampler's pinned, non-blocking copies) runs its
real path on a CPU-only machine and its copies are checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_READS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
_HOST_READS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy", torch.Tensor.cpu: "cpu"}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()
    )


class _DispatchSyncs(TorchDispatchMode):
    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _READS or (packet in _INDEXING and _has_bool_index(args)):
            self.counter.record(str(packet).removeprefix("aten."))
        return func(*args, **kwargs)


class _FunctionSyncs(TorchFunctionMode):
    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            self.counter.record(_HOST_READS[func])
        elif func is torch.Tensor.pin_memory and self.counter.fake_cuda:
            tensor = args[0]
            tensor._fake_pinned = True  # noqa: SLF001  (a marker only this module reads)
            return tensor
        elif func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_):
            return self.counter.device_copy(func, args, kwargs)
        return func(*args, **kwargs)


class HostSyncCounter:
    """``with HostSyncCounter() as c: ...``; ``c.events`` names each sync seen, in order.
    ``with c.paused(): ...`` leaves a region out (e.g. the optimizer step)."""

    def __init__(self, fake_cuda: bool = False):
        self.fake_cuda = fake_cuda
        self.events: list[str] = []
        self._paused = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> HostSyncCounter:
        self._stack.enter_context(_FunctionSyncs(self))
        self._stack.enter_context(_DispatchSyncs(self))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def record(self, what: str) -> None:
        if not self._paused:
            self.events.append(what)

    def device_copy(self, func, args, kwargs):
        """Check a ``to``/``cuda``/``copy_`` call; with ``fake_cuda`` keep copies to CUDA on the
        CPU (dtype conversions still happen)."""
        src = args[0]
        if func is torch.Tensor.copy_:
            dst_device, non_blocking = src.device, kwargs.get("non_blocking", False)
            src = args[1]
            if len(args) > 2:
                non_blocking = args[2]
        elif func is torch.Tensor.cuda:
            dst_device = torch.device("cuda")
            non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        else:
            dst_device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        if dst_device is not None and torch.device(dst_device).type != src.device.type:
            faked = self.fake_cuda and torch.device(dst_device).type == "cuda"
            to_device = src.device.type == "cpu"
            pinned = getattr(src, "_fake_pinned", False) if faked else src.is_pinned()
            if not non_blocking or (to_device and not pinned):
                self.record("blocking copy")
            if faked:
                if func is torch.Tensor.to:
                    return src.to(dtype) if dtype is not None else src
                if func is torch.Tensor.cuda:
                    return src
        return func(*args, **kwargs)
