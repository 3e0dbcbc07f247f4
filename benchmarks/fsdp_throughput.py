"""Per-GPU estimates per second for sharded plans (issue 10: FSDP at least 5,000/s), single-GPU beside them.

Each plan is estimated `--calls` times per round after one warm-up call (which fills the caches keyed on the
model spec); the figure is the median of `--rounds` rounds by wall clock, beside the rate by process CPU time.
The load average is printed before and after: on a shared machine read the CPU-time rate.

    python benchmarks/fsdp_throughput.py [--calls 2000] [--rounds 7] [--profile]

No test times anything; `--profile` prints where one FSDP plan's time goes (cProfile, top 25 by own time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

PLANS = {
    "one GPU, qlora": {},
    "fsdp 4, full": dict(method="full", gpus=4, sharding="fsdp"),
    "fsdp 8, lora": dict(method="lora", gpus=8, sharding="fsdp"),
    "fsdp 2, qlora": dict(method="qlora", gpus=2, sharding="fsdp"),
    "fsdp_grad_op 4, full": dict(method="full", gpus=4, sharding="fsdp_grad_op"),
    "ddp 8, lora": dict(method="lora", gpus=8, sharding="ddp"),
    "zero3 4, full": dict(method="full", gpus=4, sharding="zero3"),
}


def rates(call, calls: int, rounds: int) -> tuple[float, float]:
    """(median calls/s over the rounds by wall clock, calls/s by process CPU time over all rounds)."""
    walls, cpu0 = [], time.process_time()
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        walls.append(calls / (time.perf_counter() - t0))
    return statistics.median(walls), calls * rounds / max(time.process_time() - cpu0, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from vramplan.estimator import estimate_memory
    from vramplan.models import resolve_model
    from vramplan.plan import make_plan

    spec = resolve_model(args.model)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    for label, options in PLANS.items():
        plan = make_plan(**options)
        estimate_memory(spec, plan)  # warm-up: the caches keyed on the spec
        wall, cpu = rates(lambda p=plan: estimate_memory(spec, p), args.calls, args.rounds)
        print(f"{args.model} {label:>22}: {wall:9,.0f} estimates/s (median of {args.rounds}), "
              f"{cpu:9,.0f}/s by CPU time")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.profile:
        import cProfile
        import pstats

        plan = make_plan(**PLANS["fsdp 4, full"])
        cProfile.runctx("for _ in range(2000): estimate_memory(spec, plan)", globals(), locals(), "/tmp/fsdp.prof")
        pstats.Stats("/tmp/fsdp.prof").sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
