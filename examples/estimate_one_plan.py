"""Estimate one QLoRA plan and print where the memory goes.

    python examples/estimate_one_plan.py
"""

from vramplan.api import estimate
from vramplan.plan import make_plan
from vramplan.units import format_bytes

plan = make_plan(method="qlora", rank=16, targets="all-linear", seq=2048, batch=2)
result = estimate("llama3.1-8b", plan, gpu="rtx4090")

print(f"{result.model}: peak {format_bytes(result.peak_bytes)} in the {result.peak_phase} phase")
for name, nbytes in result.components.items_bytes().items():
    if nbytes:
        print(f"  {name:24s} {format_bytes(nbytes):>12s}")
for phase, nbytes in result.phases.items():
    print(f"  phase {phase:18s} {format_bytes(nbytes):>12s}")
print(f"on {result.gpu}: {format_bytes(result.total_gpu_bytes)} of {format_bytes(result.gpu_usable_bytes)}"
      f" -> {'fits' if result.fits else 'does not fit'}")
