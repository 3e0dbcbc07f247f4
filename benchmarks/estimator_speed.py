"""Estimator speed: estimates per second in-process (70B plan) and cold wall time of the CLI.

    python benchmarks/estimator_speed.py
"""

import subprocess
import sys
import time

from vramplan.estimator import estimate_memory
from vramplan.models import resolve_model
from vramplan.plan import make_plan


def in_process(n: int = 2000) -> float:
    spec = resolve_model("llama2-70b")
    plans = [make_plan(seq=s) for s in (512, 1024, 2048, 4096)]
    estimate_memory(spec, plans[0])
    t = time.perf_counter()
    for i in range(n):
        estimate_memory(spec, plans[i % len(plans)])
    return n / (time.perf_counter() - t)


def cold_cli(repeat: int = 5) -> float:
    cmd = [sys.executable, "-m", "vramplan", "estimate", "--model", "llama2-70b", "--json"]
    best = 1e9
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t)
    return best


if __name__ == "__main__":
    print(f"estimates per second (llama2-70b, 4 plans round-robin): {in_process():,.0f}")
    print(f"cold `vramplan estimate --model llama2-70b --json`: {cold_cli() * 1000:.0f} ms (best of 5)")
