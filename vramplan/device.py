"""What a training process takes on the card: the caching allocator's reserve, the CUDA context, NCCL, paged states.

`nvidia-smi` shows, per process:
* **reserved**: every segment PyTorch's caching allocator holds (`torch.cuda.max_memory_reserved()`), simulated
  on the step's allocation sequence (`vramplan.estimator.allocator`, `step_events`). It includes the cuBLAS
  workspace: `CublasHandlePool.cpp: getNewWorkspace` allocates it through the caching allocator, one per
  (handle, stream), kept for the process (`cublas_handle_stream_to_workspace`); with torch >= 2.7 cuBLASLt shares
  it (`getCUDABlasLtWorkspaceSize`: unified workspace unless TORCH_CUBLASLT_UNIFIED_WORKSPACE=0). The size is
  `hardware.blas_workspace_bytes`.
* **CUDA context**: the driver's context and loaded kernels, outside the allocator: the GPU profile's
  `cuda_context_bytes` less the BLAS workspace it includes (`hardware.default_cuda_context_bytes`).
* **NCCL** (several GPUs): communicator buffers NCCL allocates itself, outside torch's allocator. Per channel and
  peer connection, one buffer per protocol: Simple `NCCL_BUFFSIZE` (default 4 MiB, NCCL docs, env.html), LL128
  (about 4.5 MiB with the default NCCL_LL128_BUFFSIZE) and LL (256 KiB); a ring and a tree connection per channel.
  Channels: 2 over PCIe, 16 over NVLink (NCCL's topology search picks more channels on faster links; the counts
  are the usual ones NCCL_DEBUG=INFO prints on such machines, not a measurement of ours).
* **paged optimizer states** (bitsandbytes `paged_*`): `cudaMallocManaged`, outside the allocator; they page to
  host instead of failing, so `fits` leaves them out (see `MemoryEstimate.paged_spill_bytes`).

Sharded engines run their collectives on their own streams (FSDP2: `all_gather_stream`, `reduce_scatter_stream`;
DeepSpeed: its communication streams): their buffers come from pools of their own, which blocks freed on the
default stream never serve (per-stream pools). What those pools hold is added to the reserve's high end.

The reserve is an interval over two replays: the sequence in order, and the same with every free one allocation
late (a tensor whose last reference dies after the op that used it last: Python frames, autograd releasing saved
tensors). Fragmentation is not monotone in that delay (either replay can reserve more), so the interval is their
minimum and maximum; the high end adds the communication pools. `fits` uses the high end.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from vramplan.errors import AllocatorOutOfMemory
from vramplan.estimator.allocator import (
    AllocatorConfig,
    allocation_size,
    round_size,
)
from vramplan.hardware import GpuProfile, blas_workspace_bytes
from vramplan.models import ModelCache, ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.record import Record
from vramplan.units import KiB, MiB

NCCL_SIMPLE_BUFFER_BYTES = 4 * MiB  # NCCL_BUFFSIZE default
NCCL_LL128_BUFFER_BYTES = 4608 * KiB  # approximately, per connection with the default LL128 settings
NCCL_LL_BUFFER_BYTES = 256 * KiB


class ReserveInterval(Record):
    """The caching allocator's reserve above the allocated peak, from the simulation (bytes)."""

    low_bytes: int  # sequence in order
    high_bytes: int  # frees one allocation late, plus the communication streams' pools
    simulated_peak_bytes: int  # the simulation's own peak of requested bytes (a check on the sequence)


def nccl_buffer_bytes(gpus: int, profile: GpuProfile) -> int:
    """NCCL communicator buffers per GPU (see the module docstring); 0 on one GPU."""
    if gpus <= 1:
        return 0
    nvlink = profile.peer_link_bytes_per_s is not None and (
        profile.peer_link_max_gpus is None or gpus <= profile.peer_link_max_gpus)
    channels = 16 if nvlink else 2
    per_connection = NCCL_SIMPLE_BUFFER_BYTES + NCCL_LL128_BUFFER_BYTES + NCCL_LL_BUFFER_BYTES
    return channels * 2 * per_connection


def driver_context_bytes(profile: GpuProfile) -> int:
    """The profile's CUDA context less the BLAS workspace (which the allocator's reserve holds)."""
    return max(0, profile.cuda_context_bytes - blas_workspace_bytes(
        profile.vendor, profile.compute_capability, profile.architecture))


def reserve_interval(model: ModelSpec, plan: TrainingPlan, peak_bytes: int, profile: GpuProfile,
                     config: AllocatorConfig | None = None) -> ReserveInterval:
    """The reserve above `peak_bytes` (the estimator's allocated peak) on `profile`."""
    workspace = blas_workspace_bytes(profile.vendor, profile.compute_capability, profile.architecture)
    config = config or AllocatorConfig()
    low, high, sim_peak = _simulate(model, plan, config, workspace, None)
    comm = _comm_pool_bytes(model, plan)
    room = profile.usable_bytes - driver_context_bytes(profile) - nccl_buffer_bytes(plan.gpus, profile) - comm
    if peak_bytes + max(low, high) > room:
        # The device is full before the cache is: `malloc` frees the cached segments and retries (see allocator.py),
        # so the reserve is what the sequence needs within the room left. If even that fails, it is an OOM: the
        # unconstrained figures stand (and `fits` says no).
        capped = _simulate(model, plan, config, workspace, room - (peak_bytes - sim_peak))
        if capped is not None:
            low, high = min(low, capped[0]), min(high, capped[1])
    return ReserveInterval(low_bytes=min(low, high), high_bytes=max(low, high) + comm, simulated_peak_bytes=sim_peak)


def device_floor_bytes(model: ModelSpec, plan: TrainingPlan, peak_bytes: int, profile: GpuProfile) -> int:
    """A lower bound of `MemoryEstimate.total_gpu_bytes` on `profile` without the simulation, for searches that
    prune plans before simulating them (`vramplan.search`): every figure `reserve_interval` returns is at least
    the rounded cuBLAS workspace plus the communication pools (both replays add `round_size(workspace)` to a
    non-negative excess, and the capped replay only ever lowers that excess), and the context and NCCL buffers
    are fixed. A plan above this bound cannot fit; one below it must still be simulated."""
    workspace = blas_workspace_bytes(profile.vendor, profile.compute_capability, profile.architecture)
    return (peak_bytes + round_size(workspace) + _comm_pool_bytes(model, plan) + driver_context_bytes(profile)
            + nccl_buffer_bytes(plan.gpus, profile))


_CACHE = ModelCache(513)


def _simulate(model: ModelSpec, plan: TrainingPlan, config: AllocatorConfig, workspace: int,
              capacity: int | None) -> tuple[int, int, int] | None:
    """(reserve in order, reserve with late frees, simulated requested peak); None when the sequence runs out of
    memory within `capacity`. Cached per allocation sequence: plans whose GPUs run the same step (data-parallel
    plans on any number of GPUs, say) share one simulation."""
    single, shards = _single_gpu_plan(plan), _param_shards(plan)
    def replay() -> tuple[int, int, int] | None:
        try:
            with _gc_paused():
                return _run(_schedules(model, single, shards, workspace), config, workspace, capacity)
        except AllocatorOutOfMemory:
            return None

    return _CACHE.get(model, (single, shards, config, workspace, capacity), replay)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The simulation makes some 10^5 tuples (events, keys) that hold no cycles; the cyclic collector, run by
    allocation counts, would walk them again and again (a third of the events' time) and free nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_SCHEDULES = ModelCache(5)


def _schedules(model: ModelSpec, single: TrainingPlan, shards: int, workspace: int
               ) -> tuple[list[int], list[int], int, int]:
    """The step's allocation sequence as the allocator sees it, frees in order and one allocation late, and in
    each the index where the optimizer's first step begins (the last few kept: a full device replays them a
    second time, capped)."""
    from vramplan.estimator.schedule import schedule_runs
    from vramplan.estimator.step_events import step_runs

    def build() -> tuple[list[int], list[int], int, int]:
        runs, mark = step_runs(model, single, shards=shards)
        runs.insert(0, (None, [("blas_workspace", workspace)]))
        (exact, at), (late, late_at) = schedule_runs(runs, mark + 1), schedule_runs(runs, mark + 1, lag=1)
        return exact, late, at, late_at

    return _SCHEDULES.get(model, (single, shards, workspace), build)


_SNAPSHOTS: list = []  # replay states at the optimizer's first step, for plans that differ only after it


def _run(ops: tuple[list[int], list[int], int, int], config: AllocatorConfig, workspace: int,
         capacity: int | None) -> tuple[int, int, int]:
    from vramplan.estimator.replay import replay, replay_resuming

    if config == AllocatorConfig():
        del _SNAPSHOTS[:-6]
        exact, late = (replay_resuming(ops[i], capacity, _SNAPSHOTS, ops[2 + i]) for i in (0, 1))
    else:
        exact, late = replay(ops[0], config, capacity), replay(ops[1], config, capacity)
    # the reserve beyond the requested peak: rounding, unsplit blocks, cached free blocks, fragmentation
    return (max(0, exact.peak_reserved - exact.peak_requested) + round_size(workspace),
            max(0, late.peak_reserved - late.peak_requested) + round_size(workspace),
            exact.peak_requested)


def _param_shards(plan: TrainingPlan) -> int:
    """How many ways a parameter-sharding engine splits parameters and optimizer states (1: none)."""
    return plan.gpus if plan.parallelism in ("fsdp", "fsdp_grad_op", "zero3") else 1


def _single_gpu_plan(plan: TrainingPlan) -> TrainingPlan:
    """The step one GPU runs (its own micro-batch); the sharded engines' buffers are priced apart."""
    if plan.gpus == 1:
        return plan
    update = {"gpus": 1, "sharding": None, "offload": "none"}
    if plan.method == "qlora" and plan.kbit_upcast is False and plan.sharding in ("fsdp", "fsdp_grad_op", "zero3"):
        update["kbit_upcast"] = False
    return plan.derive(**update)


def _comm_pool_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """What the sharded engines' communication-stream pools hold, added to the high end (the estimator's peak
    counts the buffers in use, so this over-counts them: the conservative side). All-gather pool: the root unit's
    flat output, freed after copy-out and cached in that pool, or two layer units (the unit in use and the
    prefetched one), whichever is larger: later gathers are carved from the same cached segments. Reduce-scatter
    pool: one layer unit's padded gradients (`reduce_scatter_max_input_buffers=1`)."""
    if plan.gpus <= 1 or plan.parallelism not in ("fsdp", "fsdp_grad_op", "zero2", "zero3"):
        return 0
    from vramplan.estimator.partition import build_units

    units = build_units(model, plan)
    layer_gather = max((u.padded for u in units.layers), default=0)
    gather = 0 if plan.parallelism == "zero2" else max(units.root.padded, 2 * layer_gather)
    reduce = max(u.reduce for u in units.all)
    return sum(allocation_size(round_size(n)) for n in (gather, reduce) if n > 0)
