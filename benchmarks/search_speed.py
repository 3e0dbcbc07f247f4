"""Search speed: how long `suggest` takes to search, per question, cold (fresh process) and warm (in-process).

    python benchmarks/search_speed.py

Moved here from tests/test_suggest.py (now tests/test_recommend.py) (issue 10: no wall-clock assertions in tests).
Prints wall and CPU seconds and the machine's load: on a loaded machine, wall time measures the neighbours as much as
the search.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

QUESTIONS = [  # model, gpu, objective, gpus
    ("llama-7b", "rtx4090", "quality", 1), ("llama-7b", "rtx4090", "speed", 1), ("llama-7b", "rtx4090", "memory", 1),
    ("llama2-70b", "rtx4090", "quality", 1), ("llama2-70b", "rtx4090", "quality", 2),
]
COLD = """
import time
from vramplan.recommend import recommend
from vramplan.search_space import Request
from vramplan.hardware import resolve_gpu
from vramplan.models import resolve_model
r = Request(model=resolve_model({model!r}), gpu=resolve_gpu({gpu!r}), objective={objective!r}, gpus={gpus!r})
w, c = time.perf_counter(), time.process_time()
recommend(r)
print(time.perf_counter() - w, time.process_time() - c)
"""


def cold(model: str, gpu: str, objective: str, gpus: int) -> tuple[float, float]:
    """(wall s, CPU s) of the first search in a fresh process (caches cold; imports not counted)."""
    code = COLD.format(model=model, gpu=gpu, objective=objective, gpus=gpus)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


def warm(model: str, gpu: str, objective: str, gpus: int, repeat: int = 3) -> tuple[float, float]:
    """(wall s, CPU s), best of `repeat` searches in this process after a first one."""
    from vramplan.hardware import resolve_gpu
    from vramplan.models import resolve_model
    from vramplan.recommend import recommend
    from vramplan.search_space import Request

    r = Request(model=resolve_model(model), gpu=resolve_gpu(gpu), objective=objective, gpus=gpus)
    recommend(r)
    best = (1e9, 1e9)
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        recommend(r)
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


if __name__ == "__main__":
    print(f"load average (1, 5, 15 min): {os.getloadavg()}, {os.cpu_count()} CPUs")
    print(f"{'question':44} {'cold wall':>10} {'cold CPU':>9} {'warm wall':>10} {'warm CPU':>9}")
    for q in QUESTIONS:
        (cw, cc), (ww, wc) = cold(*q), warm(*q)
        label = f"{q[0]} on {q[3]} x {q[1]}, {q[2]}"
        print(f"{label:44} {cw:9.3f}s {cc:8.3f}s {ww:9.3f}s {wc:8.3f}s")
