"""Merging a (Q)LoRA adapter into its base model: peak GPU and host memory, and the merged size on disk.

Two ways people merge (peft 0.21, transformers 5.x, safetensors):
- `4bit`: `merge_and_unload()` on the 4-bit model the adapter was trained on. peft's `lora.bnb.Linear4bit.merge`
  runs layer by layer: `dequantize_bnb_weight` (a [out, in] tensor in the compute dtype), `get_delta_weight`
  (`lora_B @ lora_A` in the adapter's fp32, then `* scaling`: both live for a moment), `w_data = output +
  lora_data` (promoted to fp32), then `bnb.nn.Params4bit(w_data.to("cpu"), ...).to(weight.device)`: a host copy
  of the merged fp32 weight, its copy back on the GPU and the new packed weight and constants, while `output`,
  `lora_data` and `w_data` are still bound. The result is still 4-bit (re-quantized: rounding error), and
  saving it writes the packed weights.
- `16bit`: reload the base in the 16-bit dtype and `PeftModel.from_pretrained(...).merge_and_unload()`: peft's
  `lora.Linear.merge` adds `get_delta_weight` in place (`base_layer.weight.data += delta_weight`), so one layer's
  fp32 `B @ A` and its scaled copy are the only temporaries. The merged model is 16-bit.

Saving (`save_pretrained`, safetensors): transformers 5 shards at `max_shard_size="50GB"` by default, and
safetensors' `save_file` moves every tensor of a shard to the host (`_flatten_as_ptr` -> `_tobytes`:
`tensor.to("cpu")`, kept alive until the file is written): the host holds one whole shard (the whole model
below 50 GB).
Ignored: the CUDA context and allocator reserve (the GPU verdict adds them as `vramplan infer` does), Python's
own host memory, and the page cache of the safetensors files being read.
"""

from __future__ import annotations

from typing import Literal

from vramplan.errors import PlanError
from vramplan.models import ModelSpec
from vramplan.record import Record
from vramplan.units import DTYPE_BYTES

MergeMethod = Literal["4bit", "16bit"]
DEFAULT_SHARD_BYTES = 50 * 10**9  # transformers 5 `save_pretrained(max_shard_size="50GB")`


class MergePlan(Record):
    error = PlanError

    method: MergeMethod = "16bit"
    rank: int = 16  # above 0
    targets: str | None = None
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    max_shard_bytes: int = DEFAULT_SHARD_BYTES  # above 0
    quant_blocksize: int = 64
    double_quant: bool = True
    device: Literal["cuda", "cpu"] = "cuda"  # where the model sits while merging

    def _validate(self) -> None:
        for field in ("rank", "max_shard_bytes"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field}: Input should be greater than 0")


class MergeEstimate(Record):

    model: str
    plan: dict
    model_bytes: int  # the base as loaded for the merge (4-bit or 16-bit)
    adapter_bytes: int  # fp32 LoRA A and B
    merge_peak_bytes: int  # on the merge device: weights, the adapters not merged yet, one layer's temporaries
    merged_model_bytes: int  # after merge_and_unload: what save_pretrained writes
    disk_bytes: int  # the safetensors files' tensor data (headers ignored)
    shards: int
    host_peak_bytes: int  # one shard moved to the host while it is written; the merge itself on a CPU
    gpu_peak_bytes: int  # the merge peak when the model is on the GPU, else 0
    still_4bit: bool


def _layer_transient(n: int, plan: MergePlan) -> int:
    """Bytes on the merge device while one wrapped linear of `n` weights merges (the module docstring)."""
    delta = 2 * n * 4  # lora_B @ lora_A (fp32) and its scaled copy, for a moment together
    if plan.method == "16bit":
        return delta
    from vramplan.estimator.weights import quantized_layer_bytes

    # dequantized (dtype), the scaled delta and w_data (fp32), w_data's copy back from the host (only when the
    # model is on the GPU: `.to("cpu")` then `.to(weight.device)`), the new packed weight and its constants
    copy = 4 * n if plan.device == "cuda" else 0
    packed = sum(quantized_layer_bytes(n, plan.quant_blocksize, plan.double_quant))
    # double quant (bitsandbytes `functional.quantize_4bit`, compress_statistics): the fp32 absmax and
    # `absmax - offset` live while quantize_blockwise packs them
    stats = 2 * -(-n // plan.quant_blocksize) * 4 if plan.double_quant else 0
    return DTYPE_BYTES[plan.dtype] * n + delta + copy + packed + stats


def merge_peak_bytes(model: ModelSpec, plan: MergePlan, base: int, adapter_numels: list[tuple[int, int]]) -> int:
    """The peak on the merge device: `_unload_and_optionally_merge` merges the wrapped linears in module order and
    replaces each LoRA module by its base layer at once, so the adapters of the layers already merged are gone."""
    alive = sum(a for _, a in adapter_numels) * 4
    peak = base + alive
    for n, a in adapter_numels:
        peak = max(peak, base + alive + _layer_transient(n, plan))
        alive -= a * 4
    return peak


def estimate_merge(model: ModelSpec, plan: MergePlan) -> MergeEstimate:
    from vramplan.estimator.weights import resolve_targets
    from vramplan.inference import make_inference_plan, weights_bytes
    from vramplan.prefill import lora_plan

    quant = "nf4" if plan.method == "4bit" else "none"
    iplan = make_inference_plan(quant=quant, rank=plan.rank, targets=plan.targets, dtype=plan.dtype,
                                quant_blocksize=plan.quant_blocksize, double_quant=plan.double_quant)
    base, adapter = weights_bytes(model, iplan)
    wrapped = set(resolve_targets(model, lora_plan(iplan)))
    layers = [(t.numel, plan.rank * (t.shape[0] + t.shape[1])) for t in model.inventory.tensors
              if t.role == "linear" and t.module in wrapped]
    peak = merge_peak_bytes(model, plan, base, layers)
    merged = base  # 4-bit stays 4-bit (re-quantized), 16-bit stays 16-bit; the adapter is dropped
    from vramplan.estimator.weights import rotary_buffer_bytes

    disk = merged - rotary_buffer_bytes(model)  # inv_freq is registered with persistent=False: never saved
    shards = max(1, -(-disk // plan.max_shard_bytes))
    shard = min(disk, plan.max_shard_bytes + max(t.numel for t in model.inventory.tensors) * 4)
    largest = max((n for n, _ in layers), default=0)
    host_copy = 4 * largest if plan.method == "4bit" else 0  # w_data.to("cpu")
    host = max(shard, peak if plan.device == "cpu" else host_copy)
    return MergeEstimate(
        model=model.name, plan=plan.to_dict(), model_bytes=base, adapter_bytes=adapter,
        merge_peak_bytes=peak, merged_model_bytes=merged, disk_bytes=disk, shards=shards,
        host_peak_bytes=host, gpu_peak_bytes=peak if plan.device == "cuda" else 0, still_4bit=plan.method == "4bit",
    )
