"""`vramplan calibrate` and `vramplan calibrations`: a run measured against its estimate, and the stored runs.

A `CalibrationRecord` carries its plan and its estimate as the JSON they were stored with (records outlive
versions); the plan is read back typed (`as_plan`) where it is described.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from vramplan.report.plan_words import as_plan, plan_summary
from vramplan.units import format_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from vramplan.measure.records import CalibrationRecord, Comparison


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0.00%"
    return f"{value:+.1e}%" if abs(value) < 0.005 else f"{value:+.2f}%"


def _describe(record: CalibrationRecord) -> str:
    """The plan's one-line description (`plan_summary`), the device and the steps measured."""
    try:
        words = plan_summary(as_plan(record.plan))
    except ValueError:  # a record stored by a version whose plan fields differ: its method is still known
        words = str(record.plan.get("method", "?"))
    return f"{words}; {record.device}{' traced' if record.traced else ''}, {record.steps} steps"


def render_calibration(console: Console, record: CalibrationRecord) -> None:
    """Measured vs estimated: per phase, per component at the peak, and the largest storages at the peak."""
    from rich.table import Table

    console.print(f"[bold]{record.model}[/bold]: {_describe(record)}")
    if record.oom is not None:
        o = record.oom
        console.print(f"[red]out of memory[/red] in the {o.phase} phase at {format_bytes(o.allocated_bytes)} "
                      f"allocated, {format_bytes(o.reserved_bytes)} reserved (estimated peak "
                      f"{format_bytes(record.estimate['peak_bytes'])}): {o.message}")
        return
    m, phases = record.measured, record.estimate[record.estimate_basis]
    source = "max_memory_allocated" if m.source == "cuda_allocator" else "live tensors"
    estimated = "estimated (traced)" if record.estimate_basis == "traced_phases" else "estimated"
    e_peak = max(("forward", "backward", "optimizer"), key=lambda p: phases[p])
    peak = m.peak_phase if m.peak_phase == e_peak else f"measured {m.peak_phase}, estimated {e_peak}"
    _comparison_table(console, f"Per phase ({source})", "phase", record.by_phase, estimated,
                      {"peak": f"peak ({peak})", "cuda_context": "CUDA context", "paged": "paged optimizer states"})
    _comparison_table(console, "Live at the peak, per component", "component", record.by_component, estimated, {})
    top = Table(title="Largest storages at the measured peak", title_justify="left")
    for col in ("bytes", "what", "shape", "dtype", "born in"):
        top.add_column(col, justify="right" if col == "bytes" else "left")
    for a in m.top_allocations:
        top.add_row(format_bytes(a.nbytes, "auto"), a.what, str(list(a.shape)), a.dtype, a.phase)
    console.print(top)
    for note in _notes(record):
        console.print(note)


def _comparison_table(console: Console, title: str, first: str, rows: Mapping[str, Comparison], estimated: str,
                      labels: dict[str, str]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in (first, "measured", estimated, "error"):
        table.add_column(col, justify="left" if col == first else "right")
    for key, c in rows.items():
        if c.estimate_bytes or c.measured_bytes:
            table.add_row(labels.get(key, key), format_bytes(c.measured_bytes, "auto", 3),
                          format_bytes(c.estimate_bytes, "auto", 3), _pct(c.error_pct))
    console.print(table)


def _notes(record: CalibrationRecord) -> list[str]:
    m, e = record.measured, record.estimate
    notes = []
    if m.source == "cuda_allocator":
        extra = m.peak_bytes - max(m.tracked_phases[p] for p in ("forward", "backward", "optimizer"))
        notes.append(f"the allocator's peak is {format_bytes(extra, 'auto')} above the live tensors' (512-byte "
                     "rounding, kernel workspaces, temporaries inside custom kernels)")
    if record.estimate_basis == "traced_phases":
        extra = e["peak_bytes"] - record.by_phase["peak"].estimate_bytes
        sign = "+" if extra >= 0 else "-"
        notes.append(f"estimate for CUDA: peak {format_bytes(e['peak_bytes'], 'auto', 3)} ({sign}"
                     f"{format_bytes(abs(extra), 'auto')}; in-kernel 4-bit dequantization, paged states off the "
                     "allocator)")
    elif m.source != "cuda_allocator" and e.get("paged_bytes"):
        notes.append(f"paged optimizer states ({format_bytes(e['paged_bytes'], 'auto')}) are ordinary tensors off "
                     "CUDA: measured inside the phases, estimated outside them (CUDA managed memory)")
    return notes


def render_calibrations(console: Console, records: Sequence[CalibrationRecord], where: str) -> None:
    from rich.table import Table

    table = Table(title=f"Calibrations in {where}", title_justify="left")
    for col in ("id", "when (UTC)", "model", "method", "device", "status", "measured peak", "estimated", "error"):
        table.add_column(col, justify="right" if col in ("id", "measured peak", "estimated", "error") else "left")
    for r in records:
        measured = format_bytes(r.measured.peak_bytes, "auto") if r.measured else "-"
        estimated = r.by_phase["peak"].estimate_bytes if "peak" in r.by_phase else r.estimate["peak_bytes"]
        table.add_row(str(r.id), r.created_at.replace("T", " ")[:19], r.model, r.plan.get("method", "?"),
                      r.device + (" traced" if r.traced else ""), r.status, measured,
                      format_bytes(estimated, "auto"), _pct(r.error_pct.get("peak")))
    console.print(table)
