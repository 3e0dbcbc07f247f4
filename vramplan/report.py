"""All rendering: rich tables for the CLI, and JSON. Every function takes the `Console` to print on,
so tests can record output at a fixed width."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from vramplan.units import format_bytes


def print_json(obj: Any) -> None:
    """JSON on stdout, no rich markup (so it pipes into jq)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def render_models(console: Console, presets: Sequence[Any]) -> None:
    table = Table(title="Model presets", title_justify="left")
    for col in ("preset", "hub id", "family", "params", "aliases"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for p in presets:
        table.add_row(p.slug, p.hub_id, p.family, f"{p.params_b:g}B", ", ".join(p.aliases[:3]))
    console.print(table)


def render_gpus(console: Console, gpus: Sequence[Any]) -> None:
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
