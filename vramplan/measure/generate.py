"""Measure what `model.generate(...)` allocates, for checking `vramplan.inference`.

Runs transformers' own `generate` (greedy, exactly `new_tokens` new tokens) under the live-bytes tracker, the
model built from a config with random weights (`measure.build.build_model`: 4-bit through transformers'
bitsandbytes path for nf4), an adapter attached by peft's `get_peft_model` (fp32, `autocast_adapter_dtype`),
or merged by `merge_and_unload` for `quant="merged"`. Weights are registered before generating, so the peak is
the whole footprint the tracker can see (not bitsandbytes' in-kernel dequantization buffer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vramplan.inference import InferencePlan
from vramplan.measure.tracker import MemoryTracker


@dataclass(frozen=True)
class GenerateMeasurement:
    weights_bytes: int  # parameters and buffers registered before generating
    peak_bytes: int  # weights included
    kv_cache_bytes: int  # the returned cache's tensors' storage after the call


def build_for_inference(config: dict, plan: InferencePlan, device: str = "cpu", trace: bool = False) -> torch.nn.Module:
    """The model as an inference script loads it: base (4-bit for nf4), plus a LoRA adapter or merged into it."""
    from vramplan.measure.build import build_model
    from vramplan.plan import make_plan

    method = "qlora" if plan.quant == "nf4" else "lora"
    train_plan = make_plan(method=method, param_dtype=plan.dtype, rank=plan.rank or 8, targets=plan.targets,
                           kbit_upcast=False if method == "qlora" else None, attn=plan.attn,
                           quant_blocksize=plan.quant_blocksize, double_quant=plan.double_quant if method == "qlora"
                           else None)
    if plan.quant == "int8":
        raise NotImplementedError("int8 measurement needs CUDA (bitsandbytes Linear8bitLt)")
    model = build_model(config, train_plan, device=device, trace=trace)
    if plan.rank is not None:
        from peft import LoraConfig, get_peft_model

        from vramplan.measure.build import resolve_targets

        lora = LoraConfig(r=plan.rank, target_modules=resolve_targets(model, train_plan.targets),
                          init_lora_weights=False)
        model = get_peft_model(model, lora)
        if plan.quant == "merged":
            model = model.merge_and_unload()
    return model.eval()


def measure_generate(config: dict, plan: InferencePlan, device: str = "cpu", seed: int = 0) -> GenerateMeasurement:
    torch.manual_seed(seed)
    model = build_for_inference(config, plan, device)
    ids = torch.randint(3, config["vocab_size"], (plan.batch, plan.prompt), device=device)
    kwargs = {"cache_implementation": "static"} if plan.cache == "static" else {}
    tensors = [*model.parameters(), *model.buffers()]
    with torch.no_grad(), MemoryTracker() as tracker:
        weights = tracker.register(tensors, "weights")
        tracker.register([ids], "input")
        # no eos token: exactly new_tokens steps without MinNewTokensLengthLogitsProcessor's own copies
        sampling = {} if plan.greedy else {"top_k": 50, "top_p": 0.9, "temperature": 0.7}
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=plan.new_tokens,
                             do_sample=not plan.greedy, eos_token_id=None, pad_token_id=0,
                             return_dict_in_generate=True, **sampling, **kwargs)
        peak = tracker.peak_bytes
    cache = out.past_key_values
    seen: set[int] = set()
    kv = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                kv += s.nbytes()
    return GenerateMeasurement(weights_bytes=weights, peak_bytes=peak, kv_cache_bytes=kv)


def trace_prefill(config: dict, plan: InferencePlan) -> tuple[int, int]:
    """(peak bytes, KV bytes) of generate's prefill forward at full size under FakeTensorMode: the model with its
    16-bit weights (and fp32 adapter), `model(ids, past_key_values=DynamicCache(config), use_cache=True,
    logits_to_keep=1)` as `GenerationMixin._prefill` calls it; the input ids are registered, no attention mask
    is passed (generate's own int64 bookkeeping, `InferenceEstimate.ids_bytes`, is not in the peak)."""
    from transformers import DynamicCache, StaticCache

    from vramplan.measure.tracing import fake_session

    if plan.quant in ("nf4", "int8"):
        raise NotImplementedError("traced prefill: 16-bit or merged weights only")
    with fake_session(config.get("model_type")):
        model = build_for_inference(config, plan.derive(quant="none"), "cpu", trace=True)
        ids = torch.zeros((plan.batch, plan.prompt), dtype=torch.long)
        tensors = [*model.parameters(), *model.buffers()]
        with torch.no_grad(), MemoryTracker() as tracker:
            tracker.register(tensors, "weights")
            tracker.register([ids], "input")
            cfg = model.config
            cache = (StaticCache(config=cfg, max_cache_len=plan.context - 1) if plan.cache == "static"
                     else DynamicCache(config=cfg))
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            peak = tracker.peak_bytes
        kv = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))
    return peak, kv
