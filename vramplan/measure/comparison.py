"""The measured side of a calibration and its comparison with the estimate.

`measured_from_step` turns a `vramplan.measure.trainer.MeasuredStep` into a record's `Measured` part (live storages
grouped into the estimator's components by name); `compare` pairs it with the estimate, per phase and per
component. No torch: a step is read through its attributes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vramplan.estimator.result import PHASES, Components
from vramplan.measure.records import STEP_PHASES, TOP_ALLOCATIONS, Comparison, Measured, TopAllocation


def component_of(alloc: Any, peak_phase: str) -> str:
    """The estimator component a live storage belongs to, by its name (vramplan.measure.trainer.named_state).

    Follows the estimator's definitions: gradients and optimizer-step temporaries are components only at an
    optimizer-phase peak (storages born in backward / in the step); at any other peak everything that is not
    a weight, adapter, optimizer state or the batch (the unnamed storages made outside the phases: input ids
    and labels) is "activations" (saved tensors, gradients so far, temporaries).
    """
    name = alloc.name
    if name.startswith("optimizer"):
        return "optimizer_states"
    if ".quant_state." in name:
        dq = ".quant_state.state2." in name or name.endswith(".quant_state.offset")
        return "double_quant_constants" if dq else "quant_constants"
    if "lora_" in name:
        return "lora_adapters"
    if name:
        return "quantized_weights" if alloc.dtype == "uint8" else "base_weights"
    if alloc.phase == "setup":
        return "batch"
    if peak_phase == "optimizer" and alloc.phase in ("backward", "optimizer"):
        return "gradients" if alloc.phase == "backward" else "optimizer_temporaries"
    return "activations"


def measured_components(snapshot: Iterable[Any], peak_phase: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for alloc in snapshot:
        key = component_of(alloc, peak_phase)
        out[key] = out.get(key, 0) + alloc.nbytes
    return out


def measured_from_step(step: Any) -> Measured:
    """A `vramplan.measure.trainer.MeasuredStep` as a record's `measured` part."""
    tracked = {"load": step.load_bytes, "forward": step.forward_peak_bytes, "backward": step.backward_peak_bytes,
               "optimizer": step.optimizer_peak_bytes}
    cuda = step.allocated_phases is not None
    phases = {p: step.allocated_phases[p] for p in PHASES} if cuda else tracked
    top = [TopAllocation(nbytes=a.nbytes, what=a.name or f"{a.op} in {a.module or '-'}", shape=a.shape,
                         dtype=a.dtype, phase=a.phase) for a in step.peak_snapshot[:TOP_ALLOCATIONS]]
    return Measured(
        source="cuda_allocator" if cuda else "tracker", phases=phases,
        peak_phase=max(STEP_PHASES, key=lambda p: phases[p]), tracked_phases=tracked,
        after_step_bytes=step.after_step_bytes, trainable_params=step.trainable_params,
        components=measured_components(step.peak_snapshot, step.peak_phase), top_allocations=top,
        reserved_bytes=step.reserved_bytes, reserved_phases=step.reserved_phases,
        cuda_context_bytes=step.cuda_context_bytes, paged_bytes=step.paged_bytes,
    )


def estimate_basis(estimate: dict[str, Any], measured: Measured) -> str:
    """Which of the estimate's phase sets a measurement compares with: the tracker cannot see temporaries inside
    bitsandbytes' CUDA kernels, so where the estimator gives `traced_phases` (what the tracer sees), a tracker
    measurement is compared with those; the allocator on a real CUDA run with `phases`."""
    return "traced_phases" if measured.source == "tracker" and estimate.get("traced_phases") else "phases"


def compare(estimate: dict[str, Any], measured: Measured) -> tuple[dict[str, Comparison], dict[str, Comparison]]:
    """(by phase, by component): every phase, the peak, and what the CUDA run measured beyond the allocator.

    A measured component the estimate does not name is compared within "activations", which the estimator
    defines as the rest of the peak. Against `traced_phases` (when its peak is in the same phase): what the
    traced view adds in the optimizer phase, which runs no 4-bit kernel and no dropout (paged states held as
    ordinary tensors, bitsandbytes' maps), counts as optimizer states, and the rest is of the traced peak."""
    phases = estimate[estimate_basis(estimate, measured)]
    peak = max(phases[p] for p in STEP_PHASES)
    pairs: dict[str, tuple[int | None, int | None]] = {p: (phases.get(p), measured.phases[p]) for p in PHASES}
    pairs["peak"] = (peak, measured.peak_bytes)
    if measured.source == "cuda_allocator":
        pairs["reserved"] = (estimate.get("reserved_bytes"), measured.reserved_bytes)
        pairs["paged"] = (estimate.get("paged_bytes"), measured.paged_bytes)
        pairs["cuda_context"] = (estimate.get("cuda_context_bytes"), measured.cuda_context_bytes)
    by_phase = {k: Comparison(estimate_bytes=e, measured_bytes=m) for k, (e, m) in pairs.items()
                if e is not None and m is not None}
    named = Components.from_dict(estimate["components"]).listed()
    traced = phases is not estimate["phases"]
    if traced and max(STEP_PHASES, key=lambda p: phases[p]) == estimate["peak_phase"]:
        named["optimizer_states"] += phases["optimizer"] - estimate["phases"]["optimizer"]
        named["activations"] = peak - sum(v for k, v in named.items() if k != "activations")
    got = dict.fromkeys(named, 0)
    for key, nbytes in measured.components.items():
        got[key if key in named else "activations"] = got.get(key if key in named else "activations", 0) + nbytes
    by_component = {k: Comparison(estimate_bytes=named.get(k, 0), measured_bytes=v) for k, v in got.items()}
    return by_phase, by_component
