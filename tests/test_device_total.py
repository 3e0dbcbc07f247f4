"""The device total: reserve interval from the allocator simulation, cuBLAS workspace, context, NCCL, fits.

Oracles: the allocator's rules (c10/cuda/CUDACachingAllocator.cpp), ATen's CublasHandlePool.cpp workspace sizes,
NCCL's documented buffer size; published device totals are checked in test_published_runs.py.
"""

from __future__ import annotations

import pytest

from vramplan.api import estimate
from vramplan.device import driver_context_bytes, nccl_buffer_bytes, reserve_interval
from vramplan.errors import AllocatorOutOfMemory
from vramplan.estimator.allocator import AllocatorConfig
from vramplan.estimator.replay import replay
from vramplan.estimator.step_events import step_events
from vramplan.hardware import blas_workspace_bytes, resolve_gpu
from vramplan.models import resolve_model
from vramplan.plan import make_plan
from vramplan.units import MiB

TINY = {"method": "lora", "batch": 1, "seq": 128, "grad_ckpt": False}


@pytest.fixture(scope="module")
def small():
    return resolve_model("qwen2.5-0.5b")


def test_blas_workspace_sizes_from_cublas_handle_pool():
    # ':4096:2:16:8' before Hopper; 32 MiB on compute capability 9.x and later
    assert blas_workspace_bytes("nvidia", "8.0", "Ampere") == 2 * 4096 * 1024 + 8 * 16 * 1024
    assert blas_workspace_bytes("nvidia", "9.0", "Hopper") == 32 * MiB


def test_context_excludes_the_workspace_the_reserve_holds():
    gpu = resolve_gpu("a100-80gb")
    ws = blas_workspace_bytes(gpu.vendor, gpu.compute_capability, gpu.architecture)
    assert driver_context_bytes(gpu) == gpu.cuda_context_bytes - ws


def test_reserve_holds_the_workspace_and_never_undercuts_the_peak(small):
    gpu = resolve_gpu("rtx4090")
    e = estimate(small, make_plan(**TINY), gpu=gpu.slug)
    assert e.reserved_low_bytes >= e.peak_bytes + e.blas_workspace_bytes
    assert e.reserved_bytes >= e.reserved_low_bytes
    assert e.total_gpu_bytes == e.reserved_bytes + e.cuda_context_bytes + e.nccl_bytes


def test_fits_uses_the_high_end(small):
    e = estimate(small, make_plan(**TINY), gpu="rtx4090")
    assert e.headroom_bytes == e.gpu_usable_bytes - e.total_gpu_bytes
    assert e.total_gpu_low_bytes <= e.total_gpu_bytes


def test_nccl_buffers_only_with_several_gpus():
    gpu = resolve_gpu("rtx3090")
    assert nccl_buffer_bytes(1, gpu) == 0
    assert nccl_buffer_bytes(2, gpu) >= 2 * 2 * 4 * MiB  # NCCL_BUFFSIZE per channel and connection


def test_replayed_sequence_peaks_where_the_estimator_does(small):
    """The recorded sequence is the estimator's own programs: its live peak equals the counted peak."""
    from vramplan.estimator import estimate_memory

    plan = make_plan(**TINY)
    a = replay(step_events(small, plan))
    assert abs(a.peak_requested - estimate_memory(small, plan).peak_bytes) <= 0.02 * a.peak_requested
    assert a.peak_reserved >= a.peak_allocated >= a.peak_requested


def test_expandable_segments_reserve_no_more(small):
    gpu = resolve_gpu("rtx4090")
    plan = make_plan(**TINY)
    default = reserve_interval(small, plan, 0, gpu)
    expandable = reserve_interval(small, plan, 0, gpu, AllocatorConfig(expandable_segments=True))
    assert expandable.low_bytes <= default.low_bytes


def test_full_device_frees_cache_or_runs_out(small):
    """Below the unconstrained reserve, the simulation frees whole cached segments and retries; when the cache
    is split inside used segments (fragmentation) that cannot help, and the step runs out of memory."""
    plan = make_plan(method="full", batch=4, seq=512, grad_ckpt=False)
    events = step_events(small, plan)
    free = replay(events)
    room = free.peak_reserved - 20 * MiB
    try:
        capped = replay(events, capacity_bytes=room)
    except AllocatorOutOfMemory:
        return
    assert capped.peak_reserved <= room and capped.retries > 0
