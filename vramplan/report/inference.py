"""`vramplan infer`, `infer --compare`, `merge` and `check`: what generating takes, serve-or-merge, a merge's
peaks, and the plan read from a training config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vramplan.units import format_bytes, format_gib

if TYPE_CHECKING:
    from rich.console import Console

    from vramplan.configs import ConfigReading
    from vramplan.inference import InferenceEstimate, InferencePlan
    from vramplan.merge import MergeEstimate
    from vramplan.plan import TrainingPlan


# One served model: (its inference estimate, the largest batch, the largest context that fit); None: none fits
Served = tuple["InferenceEstimate", "int | None", "int | None"]


def inference_plan(e: InferenceEstimate) -> InferencePlan:
    """The estimate's plan, typed (`InferenceEstimate.plan` holds its JSON)."""
    from vramplan.inference import InferencePlan

    return InferencePlan.from_dict(e.plan)


def render_infer(out: Console, e: InferenceEstimate, max_batch: int | None, max_context: int | None) -> None:
    from rich.table import Table

    p = inference_plan(e)
    adapter = f" + LoRA r={p.rank} (fp32, unmerged)" if e.adapter_bytes else ""
    out.print(f"[bold]{e.model}[/] generate: {p.quant} weights{adapter}, batch {p.batch}, context "
              f"{p.context} ({p.prompt} prompt + {p.new_tokens} new), {p.cache} cache")
    t = Table(show_header=True, header_style="bold")
    t.add_column("component")
    t.add_column("bytes", justify="right")
    rows = [("weights", e.weights_bytes), ("adapter", e.adapter_bytes), ("KV cache (final)", e.kv_cache_bytes),
            ("prefill activations", e.prefill_activation_bytes), ("decode transient", e.decode_transient_bytes),
            ("4-bit dequant scratch", e.dequant_scratch_bytes), ("prefill peak", e.prefill_peak_bytes),
            ("last decode step peak", e.decode_peak_bytes), ("peak", e.peak_bytes)]
    if e.gpu:
        rows += [("CUDA context", e.cuda_context_bytes), ("allocator headroom", e.reserve_bytes),
                 ("device total", e.device_bytes), (f"{e.gpu} usable", e.gpu_usable_bytes)]
    for name, n in rows:
        t.add_row(name, format_bytes(n))
    out.print(t)
    out.print(f"KV cache per token of context: {format_bytes(e.kv_per_token_bytes, 'auto')} per sequence")
    if e.gpu:
        verdict = "[green]fits[/]" if e.fits else "[red]does not fit[/]"
        out.print(f"{verdict} on {e.gpu}; largest batch at this context: {max_batch or 'none'}; largest context "
                  f"at this batch: {max_context or 'none'}")


def render_infer_compare(out: Console, rows: Sequence[Served]) -> None:
    """Serve or merge: one row per weights format (and with a GPU, the largest batch and context that fit)."""
    from rich.table import Table

    first = rows[0][0]
    p = inference_plan(first)
    adapter = f" + LoRA r={p.rank} unmerged" if first.adapter_bytes else ""
    out.print(f"Serve or merge: {first.model}{adapter}, batch {p.batch}, context {p.context} (GiB)")
    t = Table(show_header=True, header_style="bold")
    for name in ("weights", "adapter", "KV cache", "peak"):
        t.add_column(name, justify="left" if name == "weights" else "right")
    gpu = first.gpu
    if gpu:
        for name in (f"on {gpu}", "fits", "max batch", "max context"):
            t.add_column(name, justify="right")
    words = {"nf4": "4-bit nf4", "int8": "8-bit int8", "none": "16-bit", "merged": "16-bit merged"}
    for e, max_batch, max_context in rows:
        cells = [words[inference_plan(e).quant], format_gib(e.adapter_bytes), format_gib(e.kv_cache_bytes),
                 format_gib(e.peak_bytes)]
        if gpu:
            cells += [format_gib(e.device_bytes or 0), "yes" if e.fits else "no", str(max_batch or "-"),
                      str(max_context or "-")]
        t.add_row(*cells)
    out.print(t)
    if gpu:
        out.print("max context stops at the model's max_position_embeddings; max batch at this context")


def render_merge(out: Console, e: MergeEstimate, gpu: str | None, device: int | None, fits: bool | None) -> None:
    from vramplan.merge import MergePlan

    p = MergePlan.from_dict(e.plan)
    kind = "4-bit model (re-quantized: still 4-bit)" if e.still_4bit else f"{p.dtype} model"
    out.print(f"[bold]{e.model}[/] merge of a LoRA r={p.rank} adapter into the {kind}, on {p.device}")
    out.print(f"  model {format_bytes(e.model_bytes)} + adapter {format_bytes(e.adapter_bytes, 'auto')}; merge peak "
              f"{format_bytes(e.merge_peak_bytes)} on {p.device}")
    out.print(f"  GPU peak {format_bytes(e.gpu_peak_bytes)}; host peak {format_bytes(e.host_peak_bytes)} "
              f"(save_pretrained moves a whole shard to the host)")
    out.print(f"  merged size on disk {format_bytes(e.disk_bytes)} in {e.shards} safetensors shard(s)")
    if gpu and device is not None:
        verdict = "[green]fits[/]" if fits else "[red]does not fit[/]"
        out.print(f"  {verdict} on {gpu}: {format_bytes(device)} with the CUDA context and allocator headroom")


def render_reading(out: Console, reading: ConfigReading, plan: TrainingPlan, model: str) -> None:
    """Each plan field: its value and the config field it came from ('flag or default' otherwise)."""
    from rich.table import Table

    out.print(f"[bold]{reading.source}[/bold] ({reading.format}): model {model}", highlight=False)
    table = Table(title="Plan read from the config", title_justify="left")
    for col in ("plan field", "value", "from"):
        table.add_column(col)
    given = plan.to_dict()
    for field, value in given.items():
        if value is None:
            continue
        source = reading.origin.get(field) if reading.plan_options.get(field) == value else None
        table.add_row(field, str(value), source or "[dim]flag or default[/dim]")
    out.print(table)
    for note in reading.notes:
        out.print(f"note: {note}", highlight=False)
