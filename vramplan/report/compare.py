"""`vramplan compare`: full fine-tuning vs LoRA vs QLoRA side by side, and what each method's model takes to serve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vramplan.report.estimate import where_words
from vramplan.report.inference import Served, inference_plan
from vramplan.units import format_gib

if TYPE_CHECKING:
    from rich.console import Console

    from vramplan.estimator.result import MemoryEstimate
    from vramplan.inference import InferenceEstimate

def render_compare(console: Console, rows: Sequence[MemoryEstimate], served: Sequence[Served] | None = None) -> None:
    """The compare table; `served` (one per row, from `compare --infer-context`) adds what each method's
    fine-tuned model takes to generate."""
    from rich.table import Table

    gpu = next((r.gpu for r in rows if r.gpu), None)
    sharded = next((r for r in rows if r.sharding != "none"), None)
    where = where_words(sharded) if sharded else ""
    title = f"Full fine-tuning vs LoRA vs QLoRA (GiB at the peak{where})"
    if served:
        p = inference_plan(served[0][0])
        title += f"; generate: its model, {p.batch} x {p.context} tokens"
    table = Table(title=title, title_justify="left")
    cols = ["model", "method", "weights", "grads + optimizer", "activations", "peak"]
    if sharded:
        cols.insert(5, "gathered + buffers")
    if gpu:
        cols += [f"on {gpu}", "fits"]
    if served:  # the inference column: what the method's model takes to generate (vramplan.inference)
        cols += ["serve", "generate"] + (["fits", "max b"] if gpu else [])
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "method", "fits") else "right")
    for i, r in enumerate(rows):
        table.add_row(*_row_cells(r, bool(sharded), gpu), *(_served_cells(*served[i], gpu) if served else []))
    console.print(table)


def _row_cells(r: MemoryEstimate, sharded: bool, gpu: str | None) -> list[str]:
    c = r.components
    opt = c.optimizer_states + c.gradients + c.optimizer_temporaries + c.master_weights
    weights = c.weights_bytes - c.reference_model  # the reference copy (DPO) counts with the activations' rest
    cells = [r.model, r.plan.method, format_gib(weights), format_gib(opt), format_gib(c.activations),
             format_gib(r.peak_bytes)]
    if sharded:
        cells.insert(5, format_gib(c.unsharded_params + c.comm_buffers))
    if gpu:
        cells += [format_gib(r.total_gpu_bytes or 0), "yes" if r.fits else "no"]
    return cells


_SERVED_WORDS = {"nf4": "nf4+LoRA", "int8": "int8+LoRA", "none": "16-bit", "merged": "merged"}


def _served_cells(e: InferenceEstimate, max_batch: int | None, max_context: int | None, gpu: str | None) -> list[str]:
    """One compare row's inference cells: the format, GiB generating (on the GPU with context and reserve when
    a GPU is given, else the peak), and with a GPU whether it fits and the largest batch at this context."""
    quant = inference_plan(e).quant
    words = _SERVED_WORDS[quant]
    if quant in ("nf4", "int8") and not e.adapter_bytes:
        words = words.replace("+LoRA", "")
    cells = [words, format_gib(e.device_bytes if gpu else e.peak_bytes)]
    if gpu:
        cells += ["yes" if e.fits else "no", str(max_batch or "-")]
    return cells
