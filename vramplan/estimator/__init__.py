"""The analytic estimator: pure Python, no torch. `estimate_memory(model, plan)` -> `MemoryEstimate`.

One GPU: `core.estimate_memory`. Several (or any `sharding`): the per-GPU estimate of `sharding.py`, built on it.
"""

from vramplan.estimator.result import MemoryEstimate
from vramplan.estimator.sharding import estimate_sharded as estimate_memory

__all__ = ["MemoryEstimate", "estimate_memory"]
