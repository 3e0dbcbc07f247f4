"""`vramplan models` and `vramplan gpus`: plain-text tables (no rich, so the listings start as fast as `--help`)."""

from __future__ import annotations

from collections.abc import Sequence

from vramplan.units import format_bytes

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms of `vramplan models`)
if TYPE_CHECKING:
    from typing import TextIO

    from vramplan.hardware import GpuProfile
    from vramplan.presets import PresetEntry


def write_table(out: TextIO, title: str, header: Sequence[str], rows: Sequence[Sequence[str]],
                right: Sequence[str] = ()) -> None:
    """A title line, then columns padded to their widest cell (those named in `right` right-aligned)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if h in right else str(c).ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()

    out.write(f"{title}\n{line(header)}\n{line(['-' * w for w in widths])}\n")
    out.write("".join(line(r) + "\n" for r in rows))


def render_models(out: TextIO, presets: Sequence[PresetEntry]) -> None:
    rows = [(p.slug, p.hub_id, p.family, f"{p.params_b:g}B", ", ".join(p.aliases[:3])) for p in presets]
    write_table(out, "Model presets", ("preset", "hub id", "family", "params", "aliases"), rows, right=("params",))


def render_gpus(out: TextIO, gpus: Sequence[GpuProfile]) -> None:
    header = ("gpu", "name", "memory", "usable", "bandwidth", "bf16 TFLOPs", "bf16", "fp8")
    rows = [(g.slug, g.name, format_bytes(g.memory_bytes, "GiB", 1), format_bytes(g.usable_bytes, "GiB", 1),
             f"{g.bandwidth_bytes_per_s / 1e9:,.0f} GB/s", f"{g.bf16_tflops_dense or 0:g}",
             "yes" if g.bf16_supported else "no", "yes" if g.fp8_supported else "no") for g in gpus]
    write_table(out, "GPU profiles", header, rows, right=header[2:])
