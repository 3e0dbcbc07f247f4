"""All rendering: rich tables for the CLI, and JSON. Every function takes the `Console` to print on,
so tests can record output at a fixed width."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vramplan.units import format_bytes

if TYPE_CHECKING:  # rich loads when a table is drawn: --json output never imports it
    from rich.console import Console


def print_json(obj: Any) -> None:
    """JSON on stdout, no rich markup (so it pipes into jq)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def render_models(console: Console, presets: Sequence[Any]) -> None:
    from rich.table import Table

    table = Table(title="Model presets", title_justify="left")
    for col in ("preset", "hub id", "family", "params", "aliases"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for p in presets:
        table.add_row(p.slug, p.hub_id, p.family, f"{p.params_b:g}B", ", ".join(p.aliases[:3]))
    console.print(table)


def render_gpus(console: Console, gpus: Sequence[Any]) -> None:
    from rich.table import Table

    table = Table(title="GPU profiles", title_justify="left")
    for col in ("gpu", "name", "memory", "usable", "bandwidth", "bf16 TFLOPs", "bf16", "fp8"):
        table.add_column(col, justify="left" if col in ("gpu", "name") else "right")
    for g in gpus:
        table.add_row(
            g.slug,
            g.name,
            format_bytes(g.memory_bytes, "GiB", 1),
            format_bytes(g.usable_bytes, "GiB", 1),
            f"{g.bandwidth_bytes_per_s / 1e9:,.0f} GB/s",
            f"{g.bf16_tflops_dense or 0:g}",
            "yes" if g.bf16_supported else "no",
            "yes" if g.fp8_supported else "no",
        )
    console.print(table)


COMPONENT_LABELS = {
    "quantized_weights": "4-bit weights (packed)",
    "quant_constants": "quantization constants",
    "double_quant_constants": "double-quant constants",
    "base_weights": "16/32-bit weights",
    "lora_adapters": "LoRA adapters",
    "optimizer_states": "optimizer states",
    "gradients": "gradients",
    "optimizer_temporaries": "optimizer step temporaries",
    "activations": "activations, logits and loss",
    "master_weights": "fp32 master weights (ZeRO)",
    "unsharded_params": "unsharded parameters (gathered units)",
    "comm_buffers": "communication buffers",
}
SHARDING_WORDS = {
    "ddp": "DDP replicas",
    "fsdp": "FSDP2 full shard",
    "fsdp_grad_op": "FSDP2, no reshard after forward",
    "zero1": "DeepSpeed ZeRO-1",
    "zero2": "DeepSpeed ZeRO-2",
    "zero3": "DeepSpeed ZeRO-3",
}


def per_gpu_words(e: Any) -> str:
    """'' on one plain GPU; else ' per GPU (rank 0 of 2, FSDP2 full shard, offload params)'."""
    if getattr(e, "sharding", "none") == "none":
        return ""
    offload = e.plan.get("offload") or "none"
    extra = f", offload {offload}" if offload != "none" else ""
    return f" per GPU (rank 0 of {e.gpus}, {SHARDING_WORDS.get(e.sharding, e.sharding)}{extra})"


def estimate_json(e: Any) -> dict:
    """The `estimate --json` contract: peak_bytes, reserved_bytes, components, phases, fits, plan, model."""
    return e.model_dump(mode="json")


def _bar(components: dict[str, int], total: int, width: int = 40) -> str:
    glyphs = "█▓▒░▚▞▙▛▜"
    out = []
    for i, (_, v) in enumerate((k, v) for k, v in components.items() if v > 0):
        out.append(glyphs[i % len(glyphs)] * max(1, round(width * v / total)) if v / total > 0.005 else "")
    return "".join(out)[:width]


def render_estimate(console: Console, e: Any) -> None:
    from rich.table import Table

    plan = e.plan
    desc = f"{plan['method']}"
    if plan["method"] != "full":
        desc += f" r={plan['rank']} targets={plan['targets']}"
    if plan["method"] == "qlora":
        desc += f" {plan['quant']}{'+dq' if plan['double_quant'] else ''}"
    if plan["param_dtype"] != "bf16" or plan.get("mixed_precision"):  # the default is bf16 without autocast
        desc += f", {plan['param_dtype']} weights" + (
            f" + {plan['mixed_precision']} autocast" if plan.get("mixed_precision") else "")
    desc += (f", batch {plan['batch']} x seq {plan['seq']}, {'grad-ckpt' if plan['grad_ckpt'] else 'no grad-ckpt'}"
             f", {plan['attn']}, {plan['optimizer']}")
    console.print(f"[bold]{e.model}[/bold]: {desc}")
    table = Table(title=f"Live memory at the peak ({e.peak_phase} phase){per_gpu_words(e)}", title_justify="left")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    peak = e.peak_bytes
    for key, v in e.components.items():
        if v:
            table.add_row(COMPONENT_LABELS.get(key, key), f"{v / 2**30:.3f}", f"{100 * v / peak:.1f}%")
    table.add_row("[bold]peak (max_memory_allocated)[/bold]", f"[bold]{peak / 2**30:.3f}[/bold]", "100%")
    console.print(table)
    console.print(_bar({k: v for k, v in e.components.items() if v}, peak))
    phases = Table(title="Phases (peak live bytes)", title_justify="left")
    for p in e.phases:
        phases.add_column(p, justify="right")
    phases.add_row(*(format_bytes(v) for v in e.phases.values()))
    console.print(phases)
    if e.paged_bytes:
        console.print(f"paged optimizer states (CUDA managed memory, may spill to host): {format_bytes(e.paged_bytes)}")
    for note in getattr(e, "notes", ()):
        console.print(f"[yellow]note:[/yellow] {note}")
    if getattr(e, "host_offload_bytes", 0):
        console.print(f"host RAM for offloaded state: {format_bytes(e.host_offload_bytes)} per GPU, "
                      f"{format_bytes(e.host_offload_bytes * e.gpus)} for {e.gpus} GPUs on one node")
    if e.gpu:
        verdict = "[green]fits[/green]" if e.fits else "[red]does not fit[/red]"
        each = f"each of {e.gpus} x " if getattr(e, "gpus", 1) > 1 else ""
        low = getattr(e, "reserved_low_bytes", None)
        reserved = format_bytes(e.reserved_bytes) if low in (None, e.reserved_bytes) else \
            f"{format_bytes(low)} to {format_bytes(e.reserved_bytes)}"
        nccl = f" + NCCL {format_bytes(e.nccl_bytes)}" if getattr(e, "nccl_bytes", 0) else ""
        console.print(
            f"on {each}{e.gpu}: reserved {reserved} + CUDA context {format_bytes(e.cuda_context_bytes)}{nccl}"
            f" = {format_bytes(e.total_gpu_bytes)} of {format_bytes(e.gpu_usable_bytes)} usable: {verdict}"
            f" (headroom {format_bytes(e.headroom_bytes)})"
        )
        if e.paged_bytes and e.fits:
            spill = e.paged_spill_bytes
            console.print(f"paged optimizer states: {format_bytes(e.paged_bytes - spill)} fit in the headroom"
                          + (f", [yellow]{format_bytes(spill)} page to host RAM every step (slower)[/yellow]"
                             if spill else ""))


def render_compare(console: Console, rows: Sequence[Any], served: Sequence[Any] | None = None) -> None:
    """The compare table; `served` (one (inference estimate, max batch, max context) per row, from `compare
    --infer-context`) adds what each method's fine-tuned model takes to generate."""
    from rich.table import Table

    gpu = next((r.gpu for r in rows if r.gpu), None)
    sharded = next((r for r in rows if getattr(r, "sharding", "none") != "none"), None)
    where = per_gpu_words(sharded) if sharded else ""
    title = f"Full fine-tuning vs LoRA vs QLoRA (GiB at the peak{where})"
    if served:
        p = served[0][0].plan
        title += f"; generate: its model, {p['batch']} x {p['context']} tokens"
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
    for r in rows:
        c = r.components
        weights = sum(c[k] for k in ("quantized_weights", "quant_constants", "double_quant_constants",
                                     "base_weights", "lora_adapters"))
        opt = c["optimizer_states"] + c["gradients"] + c["optimizer_temporaries"] + c.get("master_weights", 0)
        cells = [r.model, r.plan["method"], f"{weights / 2**30:.2f}", f"{opt / 2**30:.2f}",
                 f"{c['activations'] / 2**30:.2f}", f"{r.peak_bytes / 2**30:.2f}"]
        if sharded:
            cells.insert(5, f"{(c.get('unsharded_params', 0) + c.get('comm_buffers', 0)) / 2**30:.2f}")
        if gpu:
            cells += [f"{r.total_gpu_bytes / 2**30:.2f}", "yes" if r.fits else "no"]
        if served:
            cells += _served_cells(*served[len(table.rows)], gpu)
        table.add_row(*cells)
    console.print(table)


_SERVED_WORDS = {"nf4": "nf4+LoRA", "int8": "int8+LoRA", "none": "16-bit", "merged": "merged"}


def _served_cells(e: Any, max_batch: int | None, max_context: int | None, gpu: str | None) -> list[str]:
    """One compare row's inference cells: the format, GiB generating (on the GPU with context and reserve when
    a GPU is given, else the peak), and with a GPU whether it fits and the largest batch at this context."""
    words = _SERVED_WORDS[e.plan["quant"]]
    if e.plan["quant"] in ("nf4", "int8") and not e.adapter_bytes:
        words = words.replace("+LoRA", "")
    cells = [words, f"{(e.device_bytes if gpu else e.peak_bytes) / 2**30:.2f}"]
    if gpu:
        cells += ["yes" if e.fits else "no", str(max_batch or "-")]
    return cells
