"""The analytic estimator: pure Python, no torch. `estimate_memory(model, plan)` -> `MemoryEstimate`.

One GPU: `single_gpu.estimate_single_gpu` (weights + optimizer + the moments of one step, `step.py`). Several
(or any `sharding`): `engines.estimate_memory` re-prices that step's moments per GPU.
"""

from vramplan.estimator.engines import estimate_memory
from vramplan.estimator.result import MemoryEstimate

__all__ = ["MemoryEstimate", "estimate_memory"]
