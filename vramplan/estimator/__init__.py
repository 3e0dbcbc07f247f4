"""The analytic estimator: pure Python, no torch. `estimate_memory(model, plan)` -> `MemoryEstimate`."""

from vramplan.estimator.core import estimate_memory
from vramplan.estimator.result import MemoryEstimate

__all__ = ["MemoryEstimate", "estimate_memory"]
