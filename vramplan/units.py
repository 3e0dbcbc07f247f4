"""Byte units. Every size inside vramplan is an integer number of bytes; this is the one formatter.

GiB = 2**30 bytes (what `nvidia-smi` and torch report as "MiB"/"GiB"); GB = 10**9 bytes (what vendors print
on the box). A "24 GB" RTX 4090 carries 24 GiB of memory, of which a process can allocate less (what
`torch.cuda.mem_get_info()` reports as total): GPU profiles store both, as exact bytes.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 10**9

# Bytes per element of the dtypes vramplan reasons about (torch's element sizes).
DTYPE_BYTES: dict[str, int] = {
    "fp32": 4,
    "float32": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
    "int8": 1,
    "uint8": 1,
    "int64": 8,
    "bool": 1,
}


def format_bytes(n: int | float | None, unit: str = "GiB", digits: int = 2) -> str:
    """Format a byte count: `format_bytes(3 * 2**30) == '3.00 GiB'`; unit is 'GiB', 'MiB', 'GB' or 'auto'."""
    if n is None:
        return "-"
    if unit == "auto":
        unit = "GiB" if abs(n) >= GiB else "MiB" if abs(n) >= MiB else "KiB" if abs(n) >= KiB else "B"
    scale = {"GiB": GiB, "MiB": MiB, "KiB": KiB, "GB": GB, "B": 1}[unit]
    if unit == "B":
        return f"{int(n)} B"
    return f"{n / scale:.{digits}f} {unit}"


def format_gib(n: int | float, digits: int = 2) -> str:
    """A byte count as a bare GiB number for a table column headed 'GiB': `format_gib(3 * 2**30) == '3.00'`."""
    return f"{n / GiB:.{digits}f}"
