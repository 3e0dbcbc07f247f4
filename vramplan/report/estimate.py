"""`vramplan estimate`: the live bytes at the peak by component, the phase peaks, the GPU verdict; and its JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.report.plan_words import per_gpu_words, plan_summary
from vramplan.units import format_bytes, format_gib

if TYPE_CHECKING:  # rich loads when a table is drawn: --json output never imports it
    from rich.console import Console

    from vramplan.estimator.result import MemoryEstimate

COMPONENT_LABELS = {
    "quantized_weights": "4-bit weights (packed)",
    "quant_constants": "quantization constants",
    "double_quant_constants": "double-quant constants",
    "base_weights": "16/32-bit weights",
    "reference_model": "reference model (DPO)",
    "lora_adapters": "LoRA adapters",
    "optimizer_states": "optimizer states",
    "gradients": "gradients",
    "optimizer_temporaries": "optimizer step temporaries",
    "master_weights": "fp32 master weights (ZeRO)",
    "comm_buffers": "communication buffers",
    "unsharded_params": "unsharded parameters (gathered units)",
    "batch": "batch",
    "activations": "activations, logits and loss",
}
# an 8-bit base (plan.load_in_8bit) fills the same two components: Int8Params CB and its fp32 row scales SCB
INT8_LABELS = {"quantized_weights": "int8 weights (LLM.int8)", "quant_constants": "int8 row scales (SCB, fp32)"}


def estimate_json(e: MemoryEstimate) -> dict:
    """The `estimate --json` contract: peak_bytes, reserved_bytes, components (and their total), phases, fits,
    plan, model."""
    return e.to_dict()


def where_words(e: MemoryEstimate) -> str:
    """'' on one plain GPU; else ' per GPU (rank 0 of 2, FSDP2 full shard, offload params)'."""
    return per_gpu_words(e.sharding, e.gpus, e.plan.offload)


def _bar(components: dict[str, int], total: int, width: int = 40) -> str:
    glyphs = "█▓▒░▚▞▙▛▜"
    out = []
    for i, v in enumerate(v for v in components.values() if v > 0):
        out.append(glyphs[i % len(glyphs)] * max(1, round(width * v / total)) if v / total > 0.005 else "")
    return "".join(out)[:width]


def render_estimate(console: Console, e: MemoryEstimate) -> None:
    from rich.table import Table

    console.print(f"[bold]{e.model}[/bold]: {plan_summary(e.plan)}")
    table = Table(title=f"Live memory at the peak ({e.peak_phase} phase){where_words(e)}", title_justify="left")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    peak = e.peak_bytes
    held = {k: v for k, v in e.components.items_bytes().items() if v}
    labels = {**COMPONENT_LABELS, **(INT8_LABELS if getattr(e.plan, "load_in_8bit", False) else {})}
    for key, v in held.items():
        table.add_row(labels.get(key, key.replace("_", " ")), format_gib(v, 3), f"{100 * v / peak:.1f}%")
    table.add_row("[bold]peak (max_memory_allocated)[/bold]", f"[bold]{format_gib(peak, 3)}[/bold]", "100%")
    console.print(table)
    console.print(_bar(held, peak))
    phases = Table(title="Phases (peak live bytes)", title_justify="left")
    for p in e.phases:
        phases.add_column(p, justify="right")
    phases.add_row(*(format_bytes(v) for v in e.phases.values()))
    console.print(phases)
    _render_host_and_notes(console, e)
    if e.gpu:
        _render_verdict(console, e)


def _render_host_and_notes(console: Console, e: MemoryEstimate) -> None:
    if e.paged_bytes:
        console.print(f"paged optimizer states (CUDA managed memory, may spill to host): {format_bytes(e.paged_bytes)}")
    for note in e.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if e.host_offload_bytes:
        console.print(f"host RAM for offloaded state: {format_bytes(e.host_offload_bytes)} per GPU, "
                      f"{format_bytes(e.host_offload_bytes * e.gpus)} for {e.gpus} GPUs on one node")


def _render_verdict(console: Console, e: MemoryEstimate) -> None:
    """'on rtx4090: reserved ... + CUDA context ... = ... of ... usable: fits (headroom ...)'."""
    verdict = "[green]fits[/green]" if e.fits else "[red]does not fit[/red]"
    each = f"each of {e.gpus} x " if e.gpus > 1 else ""
    low = e.reserved_low_bytes
    reserved = format_bytes(e.reserved_bytes) if low in (None, e.reserved_bytes) else \
        f"{format_bytes(low)} to {format_bytes(e.reserved_bytes)}"
    nccl = f" + NCCL {format_bytes(e.nccl_bytes)}" if e.nccl_bytes else ""
    console.print(
        f"on {each}{e.gpu}: reserved {reserved} + CUDA context {format_bytes(e.cuda_context_bytes)}{nccl}"
        f" = {format_bytes(e.total_gpu_bytes)} of {format_bytes(e.gpu_usable_bytes)} usable: {verdict}"
        f" (headroom {format_bytes(e.headroom_bytes)})"
    )
    if e.paged_bytes and e.fits:
        spill = e.paged_spill_bytes or 0
        console.print(f"paged optimizer states: {format_bytes(e.paged_bytes - spill)} fit in the headroom"
                      + (f", [yellow]{format_bytes(spill)} page to host RAM every step (slower)[/yellow]"
                         if spill else ""))
