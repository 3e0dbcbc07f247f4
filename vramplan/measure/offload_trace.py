"""Trace a step under TRL's activation offloading (`plan.activation_offloading`) on the CPU.

TRL 1.16 `SFTTrainer.training_step` runs forward and backward inside `get_act_offloading_ctx_manager(model)`
(trl/models/activation_offloading.py): TRL's own `OffloadActivations` pack/unpack hooks run here unchanged, on a
stand-in for what the CPU lacks (`offloading_session`):

1. the "accelerator" is the CPU (`torch.accelerator.current_accelerator()` is None without a GPU), so the traced
   activations count as device tensors; the device module is a stand-in whose streams and events do nothing
   (the copies run synchronously: the byte counts do not depend on the overlap);
2. the pinned host copies (`torch.empty_like(activation, pin_memory=True, device="cpu")`) are made on the meta
   device: the tracker counts no meta bytes (host RAM is not device memory), and unpacking them
   (`.to(accelerator)`) allocates a device tensor, as the copy back onto the GPU does;
3. `Tensor.record_stream` is a no-op (CPU tensors have no streams);
4. `_get_unique_tensor_key` keys by the storage object: a FakeTensor's `data_ptr()` is 0 for every storage, which
   would make every tensor a duplicate of the first.
Pinned host bytes are summed by `host_bytes()` while the session is on (the offloaded copies of the last step).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch


class _Stream:
    def wait_event(self, event) -> None:
        return None

    def wait_stream(self, stream) -> None:
        return None

    def record_event(self) -> object:
        return object()

    def synchronize(self) -> None:
        return None


class _Device(types.SimpleNamespace):
    """`torch.get_device_module(accelerator)` on the CPU: streams that do nothing."""

    def __init__(self) -> None:
        self._current = _Stream()
        super().__init__(Stream=_Stream, current_stream=lambda: self._current, empty_cache=lambda: None,
                         stream=lambda s: contextlib.nullcontext())


class _Torch:
    """The `torch` that activation_offloading.py sees: host copies on the meta device, the CPU as accelerator."""

    def __init__(self, host: list[int]) -> None:
        self._host = host
        self._device = _Device()
        self.accelerator = types.SimpleNamespace(current_accelerator=lambda: torch.device("cpu"))

    def empty_like(self, t: torch.Tensor, *, pin_memory: bool = False, device=None, **kwargs) -> torch.Tensor:
        if str(device) == "cpu":  # the pinned host copy
            self._host[0] += t.numel() * t.element_size()
            return torch.empty_like(t, device="meta", **kwargs)
        return torch.empty_like(t, device=device, **kwargs)

    def empty(self, *args, pin_memory: bool = False, device=None, **kwargs) -> torch.Tensor:
        out = torch.empty(*args, device="meta" if str(device) == "cpu" else device, **kwargs)
        if str(device) == "cpu":
            self._host[0] += out.numel() * out.element_size()
        return out

    def get_device_module(self, kind: str) -> _Device:
        return self._device

    def __getattr__(self, name: str):
        return getattr(torch, name)


@contextlib.contextmanager
def offloading_session() -> Iterator[list[int]]:
    """Patch trl.models.activation_offloading as the module docstring says; yields [host bytes so far]."""
    import trl.models.activation_offloading as ao

    host = [0]
    saved_torch, saved_record, saved_key = ao.torch, torch.Tensor.record_stream, ao._get_unique_tensor_key
    ao.torch = _Torch(host)
    torch.Tensor.record_stream = lambda self, stream: None
    ao._get_unique_tensor_key = _storage_key
    try:
        yield host
    finally:
        ao.torch = saved_torch
        torch.Tensor.record_stream = saved_record
        ao._get_unique_tensor_key = saved_key


def _storage_key(tensor: torch.Tensor) -> tuple:
    """`_get_unique_tensor_key` keys a storage by its data pointer, which every FakeTensor reports as 0: the
    storage object itself stands for it (alive as long as the storage is)."""
    return (id(tensor.untyped_storage()), tensor.storage_offset(), tensor.dtype)


def offload_context(model: torch.nn.Module):
    """TRL's `get_act_offloading_ctx_manager(model)`, as `SFTTrainer.__init__` builds it."""
    from trl.models import get_act_offloading_ctx_manager

    return get_act_offloading_ctx_manager(model=model)
