"""Calibration records: what one run measured and estimated, per phase and per component, and their errors.

A `CalibrationRecord` is one run of `vramplan calibrate` (vramplan.measure.run) or of `VramplanCallback`: the
plan, the library versions, the estimate (as `vramplan estimate --json` prints it), the measurement and the
comparison. Plain data: no torch, no I/O (the SQLite store is vramplan.measure.store).

The records read what older versions stored (pydantic wrote them): keys they do not know are ignored, as
pydantic's default did, so a row written by another version still reads; `record_json` is the stored text.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from vramplan.estimator.result import PHASES
from vramplan.record import Record

STEP_PHASES = PHASES[1:]  # forward, backward, optimizer: the phases of one training step
TOP_ALLOCATIONS = 10


class Comparison(Record):
    """One quantity, estimated and measured, in bytes."""

    extra = "ignore"
    computed = ("error_pct",)

    estimate_bytes: int
    measured_bytes: int

    @property
    def error_pct(self) -> float | None:
        """(estimate - measured) / measured * 100: positive = the estimate is too high. None if nothing measured."""
        if self.measured_bytes == 0:
            return None
        return 100 * (self.estimate_bytes - self.measured_bytes) / self.measured_bytes


class TopAllocation(Record):
    """A storage live at the measured peak: its name (parameter, buffer, optimizer state) or op and module."""

    extra = "ignore"

    nbytes: int
    what: str
    shape: tuple[int, ...]
    dtype: str
    phase: str


class Measured(Record):
    """What one steady-state step measured. `phases` are the allocator's peaks on a real CUDA run
    (`max_memory_allocated()`, source "cuda_allocator") and the live-tensor tracker's elsewhere; `components`
    and `top_allocations` always come from the tracker's snapshot of its peak."""

    extra = "ignore"
    computed = ("peak_bytes",)

    source: Literal["tracker", "cuda_allocator"]
    phases: dict[str, int]  # load, forward, backward, optimizer
    peak_phase: str
    tracked_phases: dict[str, int]  # the tracker's own, on every device
    after_step_bytes: int
    trainable_params: int
    components: dict[str, int]  # live at the tracker's peak, in the estimator's component keys
    top_allocations: list[TopAllocation]
    reserved_bytes: int | None = None  # CUDA: max_memory_reserved() over the step
    reserved_phases: dict[str, int] | None = None
    cuda_context_bytes: int | None = None
    paged_bytes: int | None = None  # CUDA: paged optimizer states in managed memory

    @property
    def peak_bytes(self) -> int:
        return max(self.phases[p] for p in STEP_PHASES)


class OutOfMemoryRecord(Record):
    """A real CUDA step that ran out of memory: where, and the allocator's peaks in that phase before it."""

    extra = "ignore"

    phase: str
    allocated_bytes: int
    reserved_bytes: int
    message: str


class CalibrationRecord(Record):
    """One calibration run. `estimate` is the object `vramplan estimate --json` prints (kept as JSON so records
    stay readable when the estimator's result type grows); `by_phase` also holds "peak" and, on CUDA,
    "reserved", "paged" and (with a GPU profile) "cuda_context". A tracker measurement (CPU or traced) is
    compared with the estimate's `traced_phases` where it gives them (see `estimate_basis`)."""

    extra = "ignore"
    computed = ("error_pct",)

    id: int | None = None
    created_at: str
    model: str
    plan: dict[str, Any]
    device: str
    traced: bool
    steps: int
    status: Literal["ok", "oom"]
    versions: dict[str, str]
    estimate: dict[str, Any]
    estimate_basis: Literal["phases", "traced_phases"] = "phases"  # the estimate's phases compared with
    measured: Measured | None = None
    oom: OutOfMemoryRecord | None = None
    by_phase: dict[str, Comparison] = dataclasses.field(default_factory=dict)
    by_component: dict[str, Comparison] = dataclasses.field(default_factory=dict)

    @property
    def error_pct(self) -> dict[str, float | None]:
        return {k: c.error_pct for k, c in self.by_phase.items()}


def record_json(record: CalibrationRecord) -> str:
    """The record's stored text, all but its row id: one line of compact JSON (the store's `record` column and an
    export's lines; two records with the same content have the same text, which `add_many` dedupes by)."""
    fields = {k: v for k, v in record.to_dict().items() if k != "id"}
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
