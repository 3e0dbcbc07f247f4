"""The Python API a user calls: `estimate("llama2-7b", make_plan(method="qlora"), gpu="rtx4090")`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from vramplan.estimator import MemoryEstimate, estimate_memory
from vramplan.models import ModelSpec, resolve_model
from vramplan.plan import TrainingPlan

METHODS = ("full", "lora", "qlora")


def allocator_reserve_bytes(peak_bytes: int) -> int:
    """What PyTorch's caching allocator holds beyond the live peak (fragmentation, cached free blocks).

    Model: large allocations are served from 2 MiB-rounded segments and freed blocks stay cached, so reserved
    memory runs a few percent over the allocated peak; we take 5% of the peak plus 128 MiB. This is the
    calibration target for GPU runs (vramplan calibrate --device cuda records max_memory_reserved).
    """
    return peak_bytes // 20 + 128 * 2**20


def estimate(model: str | ModelSpec, plan: TrainingPlan, gpu: str | None = None,
             gpu_dirs: Sequence[Path] = ()) -> MemoryEstimate:
    """Estimate one plan; with a GPU, add the CUDA context and the allocator reserve and say if it fits."""
    spec = resolve_model(model) if isinstance(model, str) else model
    result = estimate_memory(spec, plan)
    if gpu is None:
        return result
    from vramplan.hardware import resolve_gpu

    profile = resolve_gpu(gpu, tuple(gpu_dirs))
    return result.model_copy(update={
        "gpu": profile.slug,
        "gpu_usable_bytes": profile.usable_bytes,
        "cuda_context_bytes": profile.cuda_context_bytes,
        "allocator_reserve_bytes": allocator_reserve_bytes(result.peak_bytes),
    })


def compare(models: Sequence[str], plan_for: Callable[[str], TrainingPlan], gpu: str | None = None,
            gpu_dirs: Sequence[Path] = ()) -> list[MemoryEstimate]:
    """Full fine-tuning, LoRA and QLoRA for each model (same data shape and checkpointing)."""
    rows = []
    for name in models:
        spec = resolve_model(name)
        for method in METHODS:
            rows.append(estimate(spec, plan_for(method), gpu=gpu, gpu_dirs=gpu_dirs))
    return rows
