"""Estimates per second from a preset name string: `api.estimate("llama2-7b", plan)` (issue 10: at least 5,000/s).

The model lookup is cached per process (`vramplan.models.preset_spec`, keyed on the preset's slug: presets are
package data), so every call after the first shares one spec and its inventory; the estimator's own caches then
key on that spec. Each figure is the best of `--rounds` rounds of `--calls` calls (the least disturbed by
other load); the load average is printed beside it and the CPU time of the process too.

    python benchmarks/estimate_throughput.py [--calls 5000] [--rounds 5] [--check]

`--check` exits 1 below 5,000 estimates/s (for a person to run; no test times anything).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

TARGET_PER_S = 5000


def rate(call, calls: int, rounds: int) -> tuple[float, float]:
    """(best calls/s of the rounds by wall clock, calls/s by process CPU time over all rounds)."""
    best, cpu0 = 0.0, time.process_time()
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        best = max(best, calls / (time.perf_counter() - t0))
    return best, calls * rounds / max(time.process_time() - cpu0, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    from vramplan.api import estimate
    from vramplan.models import resolve_model
    from vramplan.plan import make_plan

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    plans = {"qlora (default)": make_plan(), "lora r16": make_plan(method="lora", rank=16),
             "full, 4 GPUs FSDP": make_plan(method="full", gpus=4, sharding="fsdp")}
    results = []
    for label, plan in plans.items():
        for how, model in (("name", "llama2-7b"), ("spec", resolve_model("llama2-7b"))):
            estimate(model, plan)  # the first call builds the spec and fills the caches
            wall, cpu = rate(lambda m=model, p=plan: estimate(m, p), args.calls, args.rounds)
            results.append((label, how, wall))
            print(f"{label:>20} from {how}: {wall:9,.0f} estimates/s (best round), {cpu:9,.0f}/s by CPU time")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    slowest = min(w for _, how, w in results if how == "name")
    if args.check and slowest < TARGET_PER_S:
        print(f"below target: {slowest:,.0f}/s < {TARGET_PER_S:,}/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
