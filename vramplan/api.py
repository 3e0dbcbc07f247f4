"""The Python API a user calls: `estimate("llama2-7b", make_plan(method="qlora"), gpu="rtx4090")`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.estimator import MemoryEstimate, estimate_memory
from vramplan.models import ModelSpec, resolve_model
from vramplan.plan import TrainingPlan
from vramplan.vocab import METHODS

if TYPE_CHECKING:  # annotations only: pathlib (with re, urllib, ipaddress) costs a cold start ~3 ms
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from vramplan.estimator.allocator import AllocatorConfig
    from vramplan.hardware import GpuProfile



def allocator_reserve_bytes(peak_bytes: int) -> int:
    """A quick screen of the caching allocator's reserve for searches that price thousands of plans before
    estimating the survivors (`vramplan.search`): 5% of the peak plus 128 MiB. `estimate(..., gpu=...)` replaces
    it with the simulation of the allocator on the step's allocation sequence (`vramplan.device`)."""
    return peak_bytes // 20 + 128 * 2**20


def estimate(model: str | ModelSpec, plan: TrainingPlan, gpu: str | None = None,
             gpu_dirs: Sequence[Path] = (), calibration: bool | str | Path = False) -> MemoryEstimate:
    """Estimate one plan; with a GPU, add the CUDA context and the allocator reserve and say if it fits.
    `calibration` (True, or a store path): correct the reserve and context from stored CUDA runs on this GPU
    (`calibrated`); the peak is never changed."""
    spec = resolve_model(model) if isinstance(model, str) else model
    result = estimate_memory(spec, plan)
    if gpu is None:
        return result
    from vramplan.hardware import resolve_gpu

    profile = resolve_gpu(gpu, tuple(gpu_dirs))
    result = with_device(spec, plan, result, profile)
    if calibration is not False:
        result, _ = calibrated(result, None if calibration is True else calibration, gpu_dirs)
    return result


def calibrated(result: MemoryEstimate, store: str | Path | None = None,
               gpu_dirs: Sequence[Path] = ()) -> tuple[MemoryEstimate, str | None]:
    """The estimate with the allocator reserve and CUDA context learnt from the calibration store's CUDA runs on
    its GPU, and one line saying so ("reserve from 7 runs on this GPU"); unchanged (None) without such runs.
    A correction layer (vramplan.measure.learning): it never moves the analytic peak."""
    from vramplan.measure.learning import apply_calibration

    return apply_calibration(result, store, gpu_dirs)


def with_device(spec: ModelSpec, plan: TrainingPlan, result: MemoryEstimate, profile: GpuProfile) -> MemoryEstimate:
    """Add what the process takes on `profile` beyond its tensors (vramplan.device) and say if it fits; a plan
    the GPU cannot run (bf16 or flash-attn 2 before Ampere) is a PlanError (`hardware.check_runs_on`)."""
    from vramplan.hardware import check_runs_on

    check_runs_on(plan, profile)
    from vramplan.device import (
        driver_context_bytes,
        nccl_buffer_bytes,
        reserve_interval,
    )
    from vramplan.hardware import blas_workspace_bytes

    reserve = reserve_interval(spec, plan, result.peak_bytes, profile, plan_allocator_config(plan))
    return result.replace(
        gpu=profile.slug,
        gpu_usable_bytes=profile.usable_bytes,
        cuda_context_bytes=driver_context_bytes(profile),
        allocator_reserve_bytes=reserve.high_bytes,
        allocator_reserve_low_bytes=reserve.low_bytes,
        blas_workspace_bytes=blas_workspace_bytes(profile.vendor, profile.compute_capability, profile.architecture),
        nccl_bytes=nccl_buffer_bytes(plan.gpus, profile),
    )


def plan_allocator_config(plan: TrainingPlan) -> AllocatorConfig:
    """The plan's `PYTORCH_CUDA_ALLOC_CONF` knobs (defaults where the plan has none)."""
    from vramplan.estimator.allocator import AllocatorConfig  # with a GPU only: no estimate without one needs it

    split = plan.max_split_size_mb
    return AllocatorConfig(expandable_segments=plan.expandable_segments,
                           max_split_size_bytes=None if split is None else split * 2**20)


def compare(models: Sequence[str], plan_for: Callable[[str], TrainingPlan], gpu: str | None = None,
            gpu_dirs: Sequence[Path] = ()) -> list[MemoryEstimate]:
    """Full fine-tuning, LoRA and QLoRA for each model (same data shape and checkpointing)."""
    models = [m.strip() for m in models if m.strip()]
    if not models:
        from vramplan.errors import UnknownModelError

        raise UnknownModelError("--model: no model named; give one or a comma list (llama2-7b,llama2-13b)")
    rows = []
    for name in models:
        spec = resolve_model(name)
        for method in METHODS:
            rows.append(estimate(spec, plan_for(method), gpu=gpu, gpu_dirs=gpu_dirs))
    return rows
