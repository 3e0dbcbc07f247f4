"""The CUDA caching allocator's own numbers for a real GPU step: per-phase peaks, the context, paged states.

After torchtune's `training/memory.py`: synchronize, reset the peak stats, run the phase, synchronize, read
`torch.cuda.max_memory_allocated()` (live tensor bytes rounded to the allocator's 512-byte blocks, plus what
the live-bytes tracker cannot see: kernel workspaces and temporaries inside custom kernels such as
bitsandbytes' `gemm_4bit` dequantization) and `max_memory_reserved()` (the segments the allocator holds: the
allocated peak plus cached free blocks and fragmentation). The cache is not emptied between steps, so the
reserved peak of the last step is what a training loop holds in its steady state.

Two things the torch allocator never sees, measured separately:
- the CUDA context (driver state, cuBLAS handles, loaded kernel images): the device's used memory from NVML
  (which creates no context) before torch's first CUDA call, subtracted from `total - free` of
  `torch.cuda.mem_get_info()` (`cudaMemGetInfo`, which creates the context) right after it. Measured once per
  process, at the first CUDA measurement; kernel images loaded lazily later (CUDA_MODULE_LOADING=LAZY) are not
  in it. Without NVML (`nvidia-ml-py`) the 'before' is taken as 0, so other processes on the card are counted.
  None when CUDA was initialised before vramplan could look.
- bitsandbytes' paged optimizer states: `Optimizer8bit.get_state_buffer` takes every state of a tensor with
  >= 1e5 elements from `cudaMallocManaged` (`functional.get_paged`) and wraps it with `torch.frombuffer` as a
  *CPU* tensor marked `is_paged`; `paged_bytes` sums those tensors' sizes from the optimizer's state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from vramplan.errors import StepOutOfMemory  # noqa: F401  (raised here; importers find it here too)

_CONTEXT_BYTES: dict[int, int | None] = {}  # device index -> context bytes, measured once per process


class CudaMemory:
    """Allocator statistics per phase of one measured step on `device` (a real CUDA device)."""

    def __init__(self, device: str) -> None:
        self.index = torch.device(device).index or 0
        self.context_bytes = context_bytes(self.index)
        self.allocated: dict[str, int] = {}
        self.reserved: dict[str, int] = {}

    def mark_load(self) -> None:
        """After the model, adapters and optimizer are built: what is live and held now."""
        torch.cuda.synchronize(self.index)
        self.allocated["load"] = torch.cuda.memory_allocated(self.index)
        self.reserved["load"] = torch.cuda.memory_reserved(self.index)

    def new_step(self) -> None:
        """Forget the previous step's phase peaks (the last step is the steady state)."""
        for name in ("forward", "backward", "optimizer"):
            self.allocated.pop(name, None)
            self.reserved.pop(name, None)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Peak allocated/reserved bytes of this block; with grad accumulation, the max over micro-batches."""
        torch.cuda.synchronize(self.index)
        torch.cuda.reset_peak_memory_stats(self.index)
        yield
        torch.cuda.synchronize(self.index)
        self.allocated[name] = max(self.allocated.get(name, 0), torch.cuda.max_memory_allocated(self.index))
        self.reserved[name] = max(self.reserved.get(name, 0), torch.cuda.max_memory_reserved(self.index))

    @contextlib.contextmanager
    def out_of_memory_as_result(self, phase: Callable[[], str]) -> Iterator[None]:
        """Turn torch's OutOfMemoryError into `StepOutOfMemory` (the caller frees the memory once it is caught)."""
        try:
            yield
        except torch.cuda.OutOfMemoryError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "CUDA out of memory"
            raise StepOutOfMemory(phase(), torch.cuda.max_memory_allocated(self.index),
                                  torch.cuda.max_memory_reserved(self.index), first_line) from None


def context_bytes(index: int) -> int | None:
    """The CUDA context's device memory, measured at this process's first CUDA call (see the module doc)."""
    if index in _CONTEXT_BYTES:
        return _CONTEXT_BYTES[index]
    if torch.cuda.is_initialized():
        _CONTEXT_BYTES[index] = None
        return None
    before = _nvml_used_bytes(index)
    free, total = torch.cuda.mem_get_info(index)  # creates the context
    _CONTEXT_BYTES[index] = max(0, total - free - (before or 0))
    return _CONTEXT_BYTES[index]


def _nvml_used_bytes(index: int) -> int | None:
    """Device memory in use per NVML (as nvidia-smi shows it), without creating a CUDA context."""
    used = getattr(torch.cuda, "device_memory_used", None)  # torch >= 2.6, needs nvidia-ml-py
    if used is None:
        return None
    try:
        return int(used(index))
    except Exception:  # noqa: BLE001 - no NVML, no driver: fall back to 'unknown'
        return None


def paged_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's states that live in CUDA managed memory (bitsandbytes paged optimizers)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and getattr(value, "is_paged", False):
                total += value.numel() * value.element_size()
    return total
