"""Inference memory: what `model.generate(...)` holds on the GPU, torch-free.

The generation peak is the larger of two moments of transformers 5.x `GenerationMixin.generate`:
- the prefill: one forward over the whole prompt (`logits_to_keep=1`, generation/utils.py), peaking in the last
  decoder layer's MLP (or its attention, for eager or a static cache) with every layer's KV of the prompt held;
- the last decode step: the KV cache at the full context, plus `DynamicLayer.update`'s `torch.cat` that holds
  the old and the new keys of one layer at once, plus the last token's logits and their fp32 copy
  (`outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`).

The KV cache (cache_utils.py): `DynamicLayer` grows by `torch.cat` per step; `DynamicSlidingWindowLayer` keeps a
view of the last `sliding_window - 1` tokens of the concatenated states, so its storage is `min(tokens, window)`
after a decode step (the whole prompt right after the prefill: the view pins the prefill's storage);
`StaticLayer` allocates `max_cache_len` (prompt + new tokens) at the first update, and its prefill attends
over all of it with an explicit mask, so sdpa cannot use `enable_gqa` (`use_gqa_in_sdpa` wants no mask) and
`repeat_kv` expands K and V to every query head. Which layers slide: `get_layer_types_and_kwargs` (the
config's `layer_types`, else every layer when `sliding_window` is set).

Weights: nf4 (bitsandbytes `Linear4bit`, sizes from `estimator.weights.quantized_layer_bytes`), int8
(`Linear8bitLt`: int8 `CB` plus an fp32 `SCB` per output row), 16-bit, or merged (16-bit, no adapter). An
unmerged adapter is fp32 (peft `autocast_adapter_dtype=True`), and its forward adds fp32 temporaries: peft
`lora.Linear.forward` casts the input to the adapter's dtype and computes `result + lora_B(lora_A(x)) * scaling`
in fp32 before `.to(result dtype)`; peft's `Linear4bit.forward` clones the base output first.

Ignored: bitsandbytes' `gemm_4bit` dequantizes a weight into a [out, in] compute-dtype buffer inside the op on
CUDA; it is reported apart (`dequant_scratch_bytes`, in the peak) because the CPU tracker cannot see it.
The caching allocator's reserve is the device module's business; here the verdict keeps 5% + 128 MiB of
headroom (`api.allocator_reserve_bytes`).
"""

from __future__ import annotations

from typing import Literal

from vramplan.errors import PlanError
from vramplan.models import ModelSpec
from vramplan.prefill import layer_types, lora_plan, prefill_activation_bytes
from vramplan.record import Record
from vramplan.units import DTYPE_BYTES

Quant = Literal["nf4", "int8", "none", "merged"]
Cache = Literal["dynamic", "static"]
QUANTS: tuple[str, ...] = Quant.__args__  # type: ignore[attr-defined]
CACHES: tuple[str, ...] = Cache.__args__  # type: ignore[attr-defined]
_GEMMA = ("gemma2", "gemma3_text")


class InferencePlan(Record):
    """One `generate` call: weights format, adapter, shapes, cache."""

    error = PlanError

    quant: Quant = "nf4"
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # the load / compute dtype
    rank: int | None = None  # an unmerged LoRA adapter of this rank (None: no adapter); above 0
    targets: str | None = None
    batch: int = 1  # above 0
    context: int = 4096  # prompt + new tokens; above 1
    new_tokens: int = 256  # above 0
    cache: Cache = "dynamic"
    greedy: bool = False  # do_sample=False; else sampling with top-k / top-p (most chat models' generation_config)
    attn: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    quant_blocksize: int = 64
    double_quant: bool = True

    def _validate(self) -> None:
        for field, floor in (("rank", 0), ("batch", 0), ("context", 1), ("new_tokens", 0)):
            value = getattr(self, field)
            if value is not None and value <= floor:
                raise ValueError(f"{field}: Input should be greater than {floor}")

    @property
    def prompt(self) -> int:
        return self.context - self.new_tokens

    @property
    def has_adapter(self) -> bool:
        return self.rank is not None and self.quant != "merged"


class InferenceEstimate(Record):
    """Bytes of one generate call; `peak_bytes` is the larger of the prefill and the last decode step."""

    computed = ("peak_bytes", "device_bytes", "fits")

    model: str
    plan: dict
    weights_bytes: int
    adapter_bytes: int
    kv_cache_bytes: int  # after the last step: context - 1 tokens (the last one is sampled, not fed back)
    kv_per_token_bytes: int  # every layer, K and V, one sequence (full-attention layers only grow)
    prefill_kv_bytes: int
    prefill_activation_bytes: int
    decode_transient_bytes: int  # one layer's keys during torch.cat, or the last logits being sampled
    dequant_scratch_bytes: int
    ids_bytes: int
    prefill_peak_bytes: int
    decode_peak_bytes: int
    gpu: str | None = None
    gpu_usable_bytes: int | None = None
    cuda_context_bytes: int = 0
    reserve_bytes: int = 0

    @property
    def peak_bytes(self) -> int:
        return max(self.prefill_peak_bytes, self.decode_peak_bytes)

    @property
    def device_bytes(self) -> int:
        return self.peak_bytes + self.cuda_context_bytes + self.reserve_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_usable_bytes is None else self.device_bytes <= self.gpu_usable_bytes


def make_inference_plan(**options: object) -> InferencePlan:
    """The plan of `options` (None: the default); a bad value is a one-line `PlanError` (`InferencePlan.error`)."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given).difference(InferencePlan.field_names())
    if unknown:
        raise PlanError(f"{sorted(unknown)[0]}: Extra inputs are not permitted")
    plan = InferencePlan(**given)
    if plan.new_tokens >= plan.context:
        raise PlanError(f"--new-tokens {plan.new_tokens} must be below --context {plan.context} (the prompt is "
                        "context - new tokens)")
    if plan.rank is None and plan.targets is not None:
        raise PlanError("--targets needs --adapter-rank")
    return plan


def weights_bytes(model: ModelSpec, plan: InferencePlan) -> tuple[int, int]:
    """(base weights, unmerged adapter) as loaded for inference."""
    from vramplan.estimator.weights import (
        quantized_layer_bytes,
        rotary_buffer_bytes,
        static_memory,
    )

    d = DTYPE_BYTES[plan.dtype]
    total = 0
    for t in model.inventory.tensors:
        if t.role == "linear" and plan.quant == "nf4":
            total += sum(quantized_layer_bytes(t.numel, plan.quant_blocksize, plan.double_quant))
        elif t.role == "linear" and plan.quant == "int8":
            total += t.numel + t.shape[0] * 4  # Int8Params CB (int8) + SCB (fp32 per output row)
        else:
            total += t.numel * d
    total += rotary_buffer_bytes(model)
    adapter = static_memory(model, lora_plan(plan)).lora_adapters if plan.has_adapter else 0
    return total, adapter


def kv_bytes(model: ModelSpec, plan: InferencePlan, tokens: int, after_prefill: bool = False) -> int:
    """K and V of every layer holding `tokens` (see the module docstring for sliding and static layers)."""
    per_token = 2 * plan.batch * model.num_kv_heads * model.head_dim * DTYPE_BYTES[plan.dtype]
    window = int(model.config.get("sliding_window") or 0)
    total = 0
    for kind in layer_types(model):
        if plan.cache == "static":
            # generate's static cache: max_cache_len = max_length - 1 (the last token is never fed back)
            held = min(plan.context - 1, window) if kind == "sliding_attention" else plan.context - 1
        elif kind == "sliding_attention" and not after_prefill:
            held = min(tokens, window)
        else:
            held = tokens
        total += held * per_token
    return total


def sampling_bytes_per_logit(plan: InferencePlan) -> int:
    """Bytes per vocabulary entry of one sequence while generate picks the next token (`GenerationMixin._sample`):
    the lm_head's logits in the dtype and their new fp32 copy `next_token_logits`, while the previous step's
    copy is still bound (greedy: argmax of it). Sampling also keeps the previous step's `next_token_scores` and
    `probs` bound, and runs the logits processors: TopKLogitsWarper's `masked_fill` (fp32; the temperature's
    division died as the list rebound `scores`), then TopPLogitsWarper holds `torch.sort`'s fp32 values and
    int64 indices, the cumsum of their softmax, two bool masks (`<=`, `scatter`) and its own `masked_fill`."""
    d = DTYPE_BYTES[plan.dtype]
    return d + 8 if plan.greedy else d + 4 + 8 + 4 + 12 + 4 + 2 + 4


def dequant_scratch_bytes(model: ModelSpec, plan: InferencePlan) -> int:
    """bitsandbytes' `gemm_4bit` on CUDA: the largest 4-bit weight dequantized to the compute dtype."""
    if plan.quant != "nf4":
        return 0
    return max((t.numel for t in model.inventory.tensors if t.role == "linear"), default=0) * DTYPE_BYTES[plan.dtype]


def estimate_inference(model: ModelSpec, plan: InferencePlan) -> InferenceEstimate:
    """The generate call's bytes at its two candidate peaks (module docstring)."""
    weights, adapter = weights_bytes(model, plan)
    d = DTYPE_BYTES[plan.dtype]
    per_token = 2 * plan.batch * model.num_kv_heads * model.head_dim * d
    kv_prefill = kv_bytes(model, plan, plan.prompt, after_prefill=True)
    kv_final = kv_bytes(model, plan, plan.context - 1)  # the last token is sampled, never fed back
    act = prefill_activation_bytes(model, plan)
    vocab = model.vocab_size
    cat = 0 if plan.cache == "static" else per_token // 2  # one layer's old keys during torch.cat (per token)
    # two moments of the last step: the forward's torch.cat, with the previous step's fp32 `next_token_logits`
    # (and, sampling, `next_token_scores` and `probs`) still bound in `_sample`; then the sampling of the new
    # logits (`outputs` is deleted at the end of each step, so the lm_head's output is not in the first)
    held = plan.batch * vocab * (4 if plan.greedy else 12)
    decode_transient = max(cat * (plan.context - 2) + held, plan.batch * vocab * sampling_bytes_per_logit(plan))
    scratch = dequant_scratch_bytes(model, plan)
    # int64 input_ids and attention_mask, and the next, longer copy torch.cat makes of one of them per step
    ids = plan.batch * plan.context * 8 * 3
    static = weights + adapter + scratch + ids
    return InferenceEstimate(
        model=model.name, plan=plan.to_dict(), weights_bytes=weights, adapter_bytes=adapter,
        kv_cache_bytes=kv_final, kv_per_token_bytes=per_token // plan.batch * layer_types(model).count(
            "full_attention"), prefill_kv_bytes=kv_prefill, prefill_activation_bytes=act,
        decode_transient_bytes=decode_transient, dequant_scratch_bytes=scratch, ids_bytes=ids,
        prefill_peak_bytes=static + kv_prefill + act, decode_peak_bytes=static + kv_final + decode_transient,
    )


def on_gpu(result: InferenceEstimate, profile) -> InferenceEstimate:
    """Add the CUDA context (`device.driver_context_bytes`) and the allocator's headroom (`api.allocator_reserve_bytes`:
    generate's allocations are the same few sizes step after step, so the quick screen is used, not the
    training step's replay) and say if it fits `profile`."""
    from vramplan.api import allocator_reserve_bytes
    from vramplan.device import driver_context_bytes

    return result.replace(
        gpu=profile.slug, gpu_usable_bytes=profile.usable_bytes, cuda_context_bytes=driver_context_bytes(profile),
        reserve_bytes=allocator_reserve_bytes(result.peak_bytes),
    )


def largest_fitting(model: ModelSpec, plan: InferencePlan, profile, field: str, cap: int) -> int | None:
    """The largest `batch` or `context` (up to `cap`) whose generate fits on `profile`; None when even 1 (batch) or
    new_tokens + 1 (context) does not. Memory grows with both, so a binary search is exact."""
    lo = 1 if field == "batch" else plan.new_tokens + 1

    def fits(n: int) -> bool:
        return bool(on_gpu(estimate_inference(model, plan.derive(**{field: n})), profile).fits)

    if not fits(lo):
        return None
    hi = lo
    while hi < cap and fits(min(cap, hi * 2)):
        hi = min(cap, hi * 2)
    if hi == cap:
        return cap
    top = min(cap, hi * 2)  # fits(hi), not fits(top)
    while top - hi > 1:
        mid = (hi + top) // 2
        hi, top = (mid, top) if fits(mid) else (hi, mid)
    return hi
