"""One calibration run: measure a step of a plan, compare it with the estimate, keep the record.

`calibrate(model, plan)` measures one steady-state training step (vramplan.measure.trainer: real on CPU or
CUDA, or traced with FakeTensors), estimates the same plan, and returns a `CalibrationRecord`: measured and
estimated bytes per phase and per component, with the error `(estimate - measured) / measured * 100`. A real
CUDA step that runs out of memory is a result too (`status="oom"`, with the phase and how far it got).

This module imports torch only when a run measures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vramplan.errors import PlanError
from vramplan.measure.comparison import compare, estimate_basis, measured_from_step
from vramplan.measure.records import CalibrationRecord, Measured, OutOfMemoryRecord
from vramplan.measure.store import CalibrationStore
from vramplan.plan import TrainingPlan


def calibrate(model: str | Any, plan: TrainingPlan, *, device: str = "cpu", trace: bool = False, steps: int = 2,
              gpu: str | None = None, gpu_dirs: Sequence[Path] = (),
              store: str | Path | CalibrationStore | None = None, save: bool = True,
              seed: int = 0, on_progress: Callable[[int, int, str], None] | None = None) -> CalibrationRecord:
    """Measure one step of `plan` on `model` (a `--model` string or a ModelSpec), compare with the estimate,
    and (with `save`) add the record to `store` (a path, a CalibrationStore, or None for the default).

    `gpu` names a GPU profile whose CUDA context the estimate adds. Raises VramplanError subclasses for bad
    input and what cannot be measured; a CUDA out-of-memory is returned as a record with status "oom".
    """
    from vramplan.api import allocator_reserve_bytes, estimate
    from vramplan.models import resolve_model

    _check_single_process(plan)
    spec = resolve_model(model) if isinstance(model, str) else model
    result = estimate(spec, plan, gpu=gpu, gpu_dirs=gpu_dirs)
    cuda = device.startswith("cuda") and not trace
    if cuda and result.allocator_reserve_bytes is None:  # compare the reserved peak with the reserve model
        result = result.replace(allocator_reserve_bytes=allocator_reserve_bytes(result.peak_bytes))
    target = store if isinstance(store, CalibrationStore) else CalibrationStore(store)
    if save:  # a store that cannot be written fails now, not after the measurement
        with target._connect(create=True):
            pass
    measured, oom = _measure(spec.config, plan, device, trace, steps, seed, on_progress)
    estimate_json = result.to_dict()
    by_phase, by_component = compare(estimate_json, measured) if measured else ({}, {})
    record = CalibrationRecord(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=spec.name,
        plan=plan.to_dict(), device=device, traced=trace, steps=steps,
        status="oom" if oom else "ok", versions=library_versions(device if cuda else None),
        estimate=estimate_json, estimate_basis=estimate_basis(estimate_json, measured) if measured else "phases",
        measured=measured, oom=oom, by_phase=by_phase,
        by_component=by_component,
    )
    return target.add(record) if save else record


def _check_single_process(plan: TrainingPlan) -> None:
    """The micro-trainer is one process on one device with uint8 4-bit storage: other plans have nothing to
    compare with."""
    multi = [flag for flag, value, single in (("--gpus", getattr(plan, "gpus", 1), (1,)),
                                              ("--sharding", getattr(plan, "sharding", None), (None, "none")),
                                              ("--offload", getattr(plan, "offload", "none"), ("none",)))
             if value not in single]
    if multi:
        raise PlanError(f"{', '.join(multi)}: calibrate measures one process on one device; leave them out")
    if getattr(plan, "quant_storage", None) not in (None, "uint8"):  # measure/build.py: bnb_4bit_quant_storage
        raise PlanError("--quant-storage: the micro-trainer stores 4-bit weights in uint8 (bitsandbytes' default)")


def _measure(config: dict, plan: TrainingPlan, device: str, trace: bool, steps: int, seed: int,
             on_progress: Callable[[int, int, str], None] | None) -> tuple[Measured | None, OutOfMemoryRecord | None]:
    from vramplan.measure.cuda_memory import StepOutOfMemory
    from vramplan.measure.trainer import measure_step

    try:
        step = measure_step(config, plan, device=device, trace=trace, steps=steps, seed=seed,
                            on_progress=on_progress)
    except StepOutOfMemory as exc:
        oom = OutOfMemoryRecord(phase=exc.phase, allocated_bytes=exc.allocated_bytes,
                                reserved_bytes=exc.reserved_bytes, message=exc.message)
    else:
        return measured_from_step(step), None
    _release_cuda_memory()  # the failed step's tensors died with the exception's traceback
    return None, oom


def _release_cuda_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def library_versions(cuda_device: str | None = None) -> dict[str, str]:
    """Python, vramplan and the measuring stack's versions; on CUDA also the CUDA runtime and the GPU's name."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from vramplan import __version__

    out = {"python": platform.python_version(), "vramplan": __version__}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    if cuda_device is not None:
        import torch

        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(torch.device(cuda_device))
    return out
