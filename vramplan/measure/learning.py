"""Learning from stored runs: what the analytic model cannot know about one machine, taken from its real CUDA runs.

Two quantities are not properties of the training step but of the GPU, its driver and the CUDA/torch build: the
CUDA context (driver, kernels, cuBLAS workspace: `Measured.cuda_context_bytes`, device memory in use that the
caching allocator does not hold) and the caching allocator's reserve (`max_memory_reserved() -
max_memory_allocated()` over a step: segment rounding, cached free blocks, fragmentation). `vramplan calibrate
--device cuda` and `VramplanCallback` store both. This module is a correction layer on top of an estimate:

- context: the median of the stored runs on the same GPU model (those with this torch and CUDA build when
  there are any), in place of the profile's rule-of-thumb figure;
- reserve: runs of this very model and plan give their largest measured reserve (it may be lower than the model's);
  other runs give the median reserve per allocated byte times this peak, used only where it is above the model's
  own reserve (a run of another plan never makes the verdict less cautious);
- the analytic peak never moves: runs of this plan show their residual (measured allocated peak vs estimate).

`correct(estimate, records, profile)` is pure; `apply_calibration` reads the store. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vramplan.record import Record
from vramplan.units import format_bytes


class Learned(Record):
    """What stored runs on one GPU say about an estimate."""

    gpu: str  # the GPU's name as torch reports it
    runs: int  # CUDA runs on this GPU model
    same_plan_runs: int  # of them, runs of this model and plan
    cuda_context_bytes: int | None  # learned; None when no run measured it
    allocator_reserve_bytes: int | None  # learned; None when no run measured reserved memory
    peak_residual_pct: float | None  # runs of this plan: (measured - estimated) / estimated * 100, largest

    def words(self, estimate: Any) -> str:
        """One line for the output: what was learnt, from how many runs, next to the model's own figure."""
        parts = []
        if self.allocator_reserve_bytes is not None:
            basis = (f"{self.same_plan_runs} run{'s' * (self.same_plan_runs != 1)} of this plan"
                     if self.same_plan_runs else f"{self.runs} run{'s' * (self.runs != 1)}")
            parts.append(f"reserve from {basis} on this GPU: {format_bytes(estimate.allocator_reserve_bytes)}")
        if self.cuda_context_bytes is not None:
            parts.append(f"CUDA context from {self.runs} run{'s' * (self.runs != 1)}: "
                         f"{format_bytes(self.cuda_context_bytes)}")
        if self.peak_residual_pct is not None:
            parts.append(f"measured peak {self.peak_residual_pct:+.1f}% vs this estimate (peak not corrected)")
        return f"calibration ({self.gpu}): " + "; ".join(parts) + " (--no-calibration: the model's figures)"


def same_gpu(record: Any, profile: Any) -> bool:
    """A real CUDA run whose device name is this profile's (a name, slug or alias of it)."""
    if record.traced or record.status != "ok" or record.measured is None:
        return False
    if record.measured.source != "cuda_allocator":
        return False
    name = str(record.versions.get("gpu", "")).strip().lower()
    return bool(name) and name in {profile.name.lower(), profile.slug.lower(), *(a.lower() for a in profile.aliases)}


def _same_build(records: list[Any], versions: dict[str, str]) -> list[Any]:
    """The runs with this torch and CUDA build, where there are any (else all)."""
    keys = [k for k in ("torch", "cuda") if versions.get(k)]
    if not keys:
        return records
    matching = [r for r in records if all(r.versions.get(k) == versions[k] for k in keys)]
    return matching or records


def _plan_key(plan: dict) -> str:
    return json.dumps(plan, sort_keys=True)


def learn(estimate: Any, records: Sequence[Any], profile: Any,
          versions: dict[str, str] | None = None) -> Learned | None:
    """What the runs on this GPU say about `estimate` (None when there is none)."""
    from statistics import median  # here, not at import: statistics loads decimal and fractions (~5 ms)

    runs = _same_build([r for r in records if same_gpu(r, profile)], versions or {})
    if not runs:
        return None
    contexts = [r.measured.cuda_context_bytes for r in runs if r.measured.cuda_context_bytes is not None]
    with_reserve = [r for r in runs if r.measured.reserved_bytes is not None and r.measured.peak_bytes > 0]
    key = _plan_key(estimate.plan.to_dict())
    same = [r for r in with_reserve if r.model == estimate.model and _plan_key(r.plan) == key]
    reserve = None
    if same:
        reserve = max(r.measured.reserved_bytes - r.measured.peak_bytes for r in same)
    elif with_reserve:
        per_byte = median((r.measured.reserved_bytes - r.measured.peak_bytes) / r.measured.peak_bytes
                          for r in with_reserve)
        reserve = max(int(per_byte * estimate.peak_bytes), estimate.allocator_reserve_bytes or 0)
    residual = None
    if same:
        residual = max(100 * (r.measured.peak_bytes - estimate.peak_bytes) / estimate.peak_bytes for r in same)
    return Learned(gpu=str(runs[0].versions["gpu"]), runs=len(runs), same_plan_runs=len(same),
                   cuda_context_bytes=int(median(contexts)) if contexts else None,
                   allocator_reserve_bytes=reserve, peak_residual_pct=residual)


def correct(estimate: Any, records: Sequence[Any], profile: Any,
            versions: dict[str, str] | None = None) -> tuple[Any, str | None]:
    """The estimate with the learnt reserve and context (its peak unchanged), and the words saying so."""
    if estimate.gpu is None:
        return estimate, None
    learned = learn(estimate, records, profile, versions)
    if learned is None:
        return estimate, None
    update: dict[str, int] = {}
    if learned.allocator_reserve_bytes is not None:
        update["allocator_reserve_bytes"] = learned.allocator_reserve_bytes
        low = estimate.allocator_reserve_low_bytes
        if low is not None:
            update["allocator_reserve_low_bytes"] = min(low, learned.allocator_reserve_bytes)
    if learned.cuda_context_bytes is not None:
        update["cuda_context_bytes"] = learned.cuda_context_bytes
    corrected = estimate.replace(**update)
    return corrected, learned.words(corrected)


def local_versions() -> dict[str, str]:
    """This environment's torch version (from its metadata: torch is not imported). The CUDA build is not known
    without importing torch, so runs are matched on torch alone here."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"torch": version("torch")}
    except PackageNotFoundError:
        return {}


def apply_calibration(estimate: Any, store: str | Path | None = None,
                      gpu_dirs: Sequence[Path] = ()) -> tuple[Any, str | None]:
    """`correct` with the records of the calibration store (`store`, else the default one)."""
    if estimate.gpu is None:
        return estimate, None
    from vramplan.hardware import resolve_gpu
    from vramplan.measure.store import CalibrationStore

    records = CalibrationStore(store).records()
    if not records:
        return estimate, None
    return correct(estimate, records, resolve_gpu(estimate.gpu, tuple(gpu_dirs)), local_versions())
