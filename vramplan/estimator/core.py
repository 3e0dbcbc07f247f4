"""Two names kept for modules written before the step timeline moved (issue 11): import from their owners.

- `estimator.context`: `stream_bytes` (step_kernels.py), `attn_implementation` (prefill.py);
- the rest of the old `core`: `estimator.single_gpu` (`estimate_single_gpu`, `optimizer_for`), `estimator.step`
  (`layer_cost`, `head_cost`, `step_moments`), `estimator.context` (`layer_context`, the attention choice),
  `estimator.step_tensors` (`rope_bytes`, `attention_mask_bytes`, `batch_bytes`).
Delete this module once step_kernels.py and prefill.py import from `estimator.context`.
"""

from vramplan.estimator.context import attn_implementation, stream_bytes

__all__ = ["attn_implementation", "stream_bytes"]
