"""vramplan against published measurements of real GPU runs: allocated, reserved and device totals.

Reads `published-runs.csv` (the measured figures and their setups; default: ../shared/published-runs.csv next
to the repository, or --csv) and `benchmarks/data/published_plans.toml` (each row mapped to a preset, plan options
and GPU, with whether and why it compares). For each row with a plan it estimates the metric the row reports:
`allocated` is `peak_bytes` (torch.cuda.max_memory_allocated), `reserved` the caching allocator's reserve
interval (max_memory_reserved), `device` the device total interval (nvidia-smi). Errors are (estimate - measured) /
measured, on the interval's high end (what `fits` uses) and its low end.

    python benchmarks/published_runs.py            # the table
    python benchmarks/published_runs.py --markdown # the README's table
"""

from __future__ import annotations

import argparse
import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from vramplan.api import estimate
from vramplan.plan import make_plan
from vramplan.units import GB, GiB

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "benchmarks" / "data" / "published_plans.toml"
DEFAULT_CSV = ROOT.parent / "shared" / "published-runs.csv"
UNITS = {"GiB": GiB, "GB (1e9)": GB, "GB": GB, "bytes -> GiB": GiB}


@dataclass(frozen=True)
class Row:
    id: str
    metric: str  # allocated | reserved | device
    comparable: str  # exact | upper | no
    why: str
    measured_bytes: int | None
    estimate_low: int | None = None
    estimate_high: int | None = None

    @property
    def error_high(self) -> float | None:
        if self.estimate_high is None or not self.measured_bytes:
            return None
        return (self.estimate_high - self.measured_bytes) / self.measured_bytes

    @property
    def error_low(self) -> float | None:
        if self.estimate_low is None or not self.measured_bytes:
            return None
        return (self.estimate_low - self.measured_bytes) / self.measured_bytes


def measured_bytes(record: dict[str, str]) -> int | None:
    """The row's figure in bytes; PM rows report "max (p99 train x)": the p99 of the training steps is used."""
    text, unit = record["value"].strip().lstrip("~"), record["unit"].strip()
    if "p99 train" in text:
        text = text.split("p99 train", 1)[1].strip(" )")
    scale = UNITS.get(unit)
    if scale is None:
        return None
    return int(float(text.split()[0]) * scale)


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(line for line in fh if not line.startswith("#"))}


def evaluate(csv_path: Path = DEFAULT_CSV) -> list[Row]:
    records = read_csv(csv_path)
    mapping = tomllib.loads(PLANS.read_text())
    rows = []
    for rid, m in mapping.items():
        rec = records.get(rid)
        measured = measured_bytes(rec) if rec else None
        row = Row(rid, m["metric"], m["comparable"], m["why"], measured)
        if "plan" in m and "gpu" in m:
            e = estimate(m["model"], make_plan(**m["plan"]), gpu=m["gpu"])
            low, high = {
                "allocated": (e.peak_bytes, e.peak_bytes),
                "reserved": (e.reserved_low_bytes, e.reserved_bytes),
                "device": (e.total_gpu_low_bytes, e.total_gpu_bytes),
            }[m["metric"]]
            row = Row(rid, m["metric"], m["comparable"], m["why"], measured, low, high)
        rows.append(row)
    return rows


def summary(rows: list[Row], metric: str) -> str:
    scored = [r for r in rows if r.comparable == "exact" and r.metric == metric and r.error_high is not None]
    if not scored:
        return f"{metric}: no comparable rows"
    errs = [r.error_high for r in scored]
    lows = [r.error_low for r in scored]
    return (f"{metric}: {len(scored)} rows, high end median {statistics.median(errs):+.1%} "
            f"(min {min(errs):+.1%}, max {max(errs):+.1%}); low end median {statistics.median(lows):+.1%} "
            f"(min {min(lows):+.1%})")


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def table(rows: list[Row], markdown: bool = False) -> str:
    head = ["row", "metric", "measured GiB", "estimate GiB (low-high)", "error (high)", "error (low)", "compares"]
    lines = []
    for r in rows:
        est = "-" if r.estimate_high is None else (
            _gib(r.estimate_high) if r.estimate_low == r.estimate_high else
            f"{_gib(r.estimate_low)}-{_gib(r.estimate_high)}")
        compares = r.comparable if r.comparable == "exact" else f"{r.comparable}: {r.why}"
        lines.append([r.id, r.metric, _gib(r.measured_bytes), est, _pct(r.error_high), _pct(r.error_low), compares])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*c) for c in [head, *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    rows = evaluate(args.csv)
    print(table(rows, args.markdown))
    print()
    for metric in ("allocated", "reserved", "device"):
        print(summary(rows, metric))
    bounded = [r for r in rows if r.comparable == "upper" and r.error_high is not None]
    if bounded:
        below = [r.id for r in bounded if r.error_high < 0]
        print(f"upper-bound rows (the estimate at the setup's worst case must not be below): {len(bounded)}, "
              f"below: {', '.join(below) or 'none'}")


if __name__ == "__main__":
    main()
