"""Estimated vs published tokens/s of real fine-tuning runs (`benchmarks/data/published_speed.csv`).

    python benchmarks/published_speed.py [--csv PATH] [--json]

Each row names its source (repository, path, commit), the plan it maps to (vramplan plan fields as JSON), the
GPU profile, whether the run's forward was under torch.autocast (HF Trainer `bf16=True`), the library versions of
the run, and whether it compares: a row whose stack differs from what
vramplan models in a way that changes the work done is listed with its error but left out of the summary, with
the reason in `notes`. Error = (estimate - published) / published; the interval is `tokens_per_s_low`..`_high`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from vramplan.hardware import resolve_gpu
from vramplan.models import resolve_model
from vramplan.plan import make_plan
from vramplan.speed import step_time

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "benchmarks" / "data" / "published_speed.csv"


def load_rows(path: Path = DEFAULT_CSV) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def compare_row(row: dict) -> dict:
    """The estimate for one published row: tokens/s, its interval, the error and what bounds the step."""
    model_arg = row["model"]
    model = resolve_model(str(ROOT / model_arg) if model_arg.startswith("benchmarks/") else model_arg)
    plan = make_plan(**json.loads(row["plan"]))
    est = step_time(model, plan, resolve_gpu(row["gpu"]), autocast=row.get("autocast") == "yes" or None)
    published = float(row["published_tokens_per_s_per_gpu"])
    micro = est.micro_batch_s
    return {
        "id": row["id"], "model": model_arg.rsplit("/", 1)[-1], "gpu": row["gpu"], "method": plan.method,
        "batch": plan.batch, "seq": plan.seq, "published": published, "estimate": est.tokens_per_s,
        "low": est.tokens_per_s_low, "high": est.tokens_per_s_high,
        "error_pct": 100 * (est.tokens_per_s - published) / published,
        "inside": est.tokens_per_s_low <= published <= est.tokens_per_s_high,
        "compares": row["compares"] == "yes", "mfu": est.mfu,
        "shares": {"matmul": est.matmul_s / micro, "attention": est.attention_s / micro,
                   "elementwise": est.elementwise_s / micro, "dequant": est.dequant_s / micro},
    }


def summary(results: list[dict]) -> dict:
    errors = [abs(r["error_pct"]) for r in results if r["compares"]]
    inside = [r["inside"] for r in results if r["compares"]]
    return {"rows": len(errors), "median_abs_error_pct": statistics.median(errors) if errors else None,
            "max_abs_error_pct": max(errors) if errors else None, "inside_interval": sum(inside)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [compare_row(r) for r in load_rows(args.csv)]
    if args.json:
        print(json.dumps({"rows": results, "summary": summary(results)}, indent=2))
        return 0
    print(f"{'id':6} {'model':28} {'gpu':10} {'method':6} {'b x seq':>9} {'published':>9} {'estimate':>9} "
          f"{'interval':>13} {'error':>7}  mfu  matmul/attn/elem/dequant")
    for r in results:
        s = r["shares"]
        mark = "" if r["compares"] else "  (does not compare)"
        print(f"{r['id']:6} {r['model'][:28]:28} {r['gpu']:10} {r['method']:6} {r['batch']:>3}x{r['seq']:<5} "
              f"{r['published']:9,.0f} {r['estimate']:9,.0f} {r['low']:6,.0f}-{r['high']:<6,.0f} "
              f"{r['error_pct']:+6.1f}%  {r['mfu']:.2f} {s['matmul']:.0%}/{s['attention']:.0%}/"
              f"{s['elementwise']:.0%}/{s['dequant']:.0%}{mark}")
    s = summary(results)
    print(f"comparable rows: {s['rows']}; median |error| {s['median_abs_error_pct']:.1f}%, max "
          f"{s['max_abs_error_pct']:.1f}%; published inside the interval: {s['inside_interval']} of {s['rows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
