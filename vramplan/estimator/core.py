"""Compatibility names for modules written before the step timeline moved (issue 11): import from the owners.

- `estimator.single_gpu`: `estimate_single_gpu` (was `core.estimate_memory`), `optimizer_for` (was `_optimizer`);
- `estimator.step`: `layer_cost`, `head_cost` (was `_head_cost`), `step_moments`, `LayerCost`;
- `estimator.context`: `layer_context` (was `_ctx`), `stream_bytes`, `attn_implementation`, `sliding_window`,
  `sdpa_sliding_mask`, `embedding_output_requires_grad`, `kernel_dequantizes`;
- `estimator.step_tensors`: `rope_bytes`, `attention_mask_bytes`, `batch_bytes`.
Importers today: estimator/step_events.py, estimator/evaluation.py, step_kernels.py, prefill.py. Delete this
module once they import from the owners.
"""

from vramplan.estimator.context import (
    GEMM_4BIT_KERNEL_MAX_ROWS,
    attn_implementation,
    embedding_output_requires_grad,
    kernel_dequantizes,
    layer_context,
    sdpa_sliding_mask,
    sliding_window,
    stream_bytes,
)
from vramplan.estimator.single_gpu import estimate_single_gpu, optimizer_for
from vramplan.estimator.step import LayerCost, head_cost, layer_cost
from vramplan.estimator.step_tensors import attention_mask_bytes, batch_bytes, rope_bytes

_ctx = layer_context
_head_cost = head_cost
_optimizer = optimizer_for

__all__ = [
    "GEMM_4BIT_KERNEL_MAX_ROWS", "LayerCost", "_ctx", "_head_cost", "_optimizer", "attention_mask_bytes",
    "attn_implementation", "batch_bytes", "embedding_output_requires_grad", "estimate_single_gpu",
    "kernel_dequantizes", "layer_cost", "rope_bytes", "sdpa_sliding_mask", "sliding_window", "stream_bytes",
]
