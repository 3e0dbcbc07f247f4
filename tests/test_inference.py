"""`vramplan infer` against transformers' own `generate`, run on CPU under the live-bytes tracker
(`vramplan.measure.generate`): the oracle is the library, at small size (slow tier: each run builds a model).

bitsandbytes' CPU path repacks 4-bit weights for its CPU kernel (`_convert_weight_packed_for_cpu`), which CUDA
never does, so nf4 generation is not measured here; the 4-bit weight sizes are the training estimator's,
pinned in tests/test_estimator_vs_libraries.py.
"""

from __future__ import annotations

import json

import pytest

from vramplan.errors import PlanError
from vramplan.inference import (
    estimate_inference,
    largest_fitting,
    layer_types,
    make_inference_plan,
    on_gpu,
)
from vramplan.models import resolve_model, spec_from_config

SMALL = {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 4096,
             "tie_word_embeddings": False, "pad_token_id": 0}

CASES = {
    # a long generation: the last decode step (KV + torch.cat + fp32 logits) is the peak
    "llama-decode-peak": (dict(SMALL, model_type="llama", num_hidden_layers=2, hidden_size=64, intermediate_size=172),
                          {"quant": "none", "batch": 6, "context": 60, "new_tokens": 54, "greedy": True}),
    # sampling with top-k/top-p: the logits processors' copies and torch.sort's int64 indices
    "llama-sampling": (dict(SMALL, model_type="llama", num_hidden_layers=1, hidden_size=32, intermediate_size=86,
                            vocab_size=30000), {"quant": "none", "batch": 8, "context": 24, "new_tokens": 8}),
    "llama-lora-all-linear": (dict(SMALL, model_type="llama"),
                              {"quant": "none", "batch": 2, "context": 130, "new_tokens": 4, "rank": 8,
                               "targets": "all-linear"}),
    "llama-merged": (dict(SMALL, model_type="llama"),
                     {"quant": "merged", "batch": 2, "context": 130, "new_tokens": 4, "rank": 8}),
    "llama-eager": (dict(SMALL, model_type="llama"), {"quant": "none", "batch": 2, "context": 100, "new_tokens": 4,
                                                          "attn": "eager"}),
    "llama-static-cache": (dict(SMALL, model_type="llama"),
                           {"quant": "none", "batch": 2, "context": 100, "new_tokens": 4, "cache": "static"}),
    "mistral-sliding": (dict(SMALL, model_type="mistral", sliding_window=16),
                        {"quant": "none", "batch": 2, "context": 60, "new_tokens": 30}),
    "qwen3-fp32-lora": (dict(SMALL, model_type="qwen3", head_dim=32),
                        {"quant": "none", "batch": 2, "context": 60, "new_tokens": 3, "dtype": "fp32", "rank": 4}),
    "phi3-fused-lora": (dict(SMALL, model_type="phi3", num_key_value_heads=4),
                        {"quant": "none", "batch": 2, "context": 60, "new_tokens": 3, "rank": 4,
                         "targets": "all-linear"}),
    "gemma2-eager-sliding": (dict(SMALL, model_type="gemma2", head_dim=32, sliding_window=16, tie_word_embeddings=True),
                             {"quant": "none", "batch": 2, "context": 60, "new_tokens": 30}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_generate_peak_and_cache_match_transformers(case: str) -> None:
    from vramplan.measure.generate import measure_generate

    cfg, options = CASES[case]
    plan = make_inference_plan(**options)
    est = estimate_inference(spec_from_config(cfg, case, "test"), plan)
    measured = measure_generate(cfg, plan)
    assert est.weights_bytes + est.adapter_bytes == pytest.approx(measured.weights_bytes, abs=8)
    assert est.kv_cache_bytes == measured.kv_cache_bytes
    peak = est.peak_bytes - est.dequant_scratch_bytes  # the tracker cannot see bitsandbytes' in-kernel buffer
    assert measured.peak_bytes * 0.999 <= peak <= measured.peak_bytes * 1.01, (peak, measured.peak_bytes)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mistral-7b", "gemma2-9b", "gemma2-2b", "qwen2.5-7b", "llama3.1-8b"])
def test_sliding_layers_are_transformers_layer_types(preset: str) -> None:
    from transformers.cache_utils import get_layer_types_and_kwargs

    from vramplan.measure.build import hf_config

    spec = resolve_model(preset)
    types, _ = get_layer_types_and_kwargs(hf_config(spec.config))
    assert layer_types(spec) == list(types)


def test_merged_drops_the_adapter_and_4bit_is_smaller() -> None:
    spec = resolve_model("llama2-7b")
    merged = estimate_inference(spec, make_inference_plan(quant="merged", rank=16))
    nf4 = estimate_inference(spec, make_inference_plan(quant="nf4", rank=16))
    assert merged.adapter_bytes == 0 and nf4.adapter_bytes > 0
    assert nf4.weights_bytes < merged.weights_bytes / 3


def test_largest_batch_is_the_boundary() -> None:
    from vramplan.hardware import resolve_gpu

    spec, gpu = resolve_model("llama2-7b"), resolve_gpu("rtx4090")
    plan = make_inference_plan(quant="nf4", context=4096)
    best = largest_fitting(spec, plan, gpu, "batch", 4096)
    assert best is not None
    assert on_gpu(estimate_inference(spec, plan.replace(batch=best)), gpu).fits
    assert not on_gpu(estimate_inference(spec, plan.replace(batch=best + 1)), gpu).fits


@pytest.mark.parametrize("options, line", [
    ({"context": 10, "new_tokens": 10}, "--new-tokens 10 must be below --context 10 (the prompt is context - new "
                                        "tokens)"),
    ({"targets": "q_proj"}, "--targets needs --adapter-rank"),
    # the range lines pydantic's Field(gt=...) printed, kept word for word by the record
    ({"batch": 0}, "batch: Input should be greater than 0"),
    ({"rank": -3}, "rank: Input should be greater than 0"),
    ({"context": 1, "new_tokens": 1}, "context: Input should be greater than 1"),
    ({"new_tokens": 0}, "new_tokens: Input should be greater than 0"),
    ({"quant": "nf5"}, "quant: 'nf5' is not one of: nf4, int8, none, merged"),
    ({"batch": True}, "batch: must be an integer, not True"),
    ({"beams": 4}, "beams: Extra inputs are not permitted"),
])
def test_bad_plans_are_one_line_plan_errors(options: dict, line: str) -> None:
    with pytest.raises(PlanError) as exc:
        make_inference_plan(**options)
    assert str(exc.value).startswith(line) and "\n" not in str(exc.value)


def test_estimate_json_reads_back_as_the_same_records() -> None:
    """`infer --json` is the estimate's `to_dict` (with the computed peak, device total and verdict): it reads
    back, plan included, as the records it came from."""
    from vramplan.hardware import resolve_gpu
    from vramplan.inference import InferenceEstimate, InferencePlan

    plan = make_inference_plan(quant="int8", rank=8, targets="all-linear", batch=3, context=1024, cache="static")
    est = on_gpu(estimate_inference(resolve_model("qwen2.5-0.5b"), plan), resolve_gpu("rtx4090"))
    data = json.loads(json.dumps(est.to_dict()))
    assert data["peak_bytes"] == max(est.prefill_peak_bytes, est.decode_peak_bytes) and data["fits"] is True
    assert data["device_bytes"] == est.peak_bytes + est.cuda_context_bytes + est.reserve_bytes
    assert InferenceEstimate.from_dict(data) == est and InferencePlan.from_dict(data["plan"]) == plan


def test_cli_json_and_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    from vramplan.cli import main

    assert main(["infer", "--model", "llama2-7b", "--quant", "merged", "--batch", "64", "--gpu", "rtx4090",
                 "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False and out["max_batch"] >= 1 and out["peak_bytes"] > out["kv_cache_bytes"]
    assert main(["infer", "--model", "llama2-7b", "--context", "5", "--new-tokens", "9"]) == 2


def test_cli_compare_lists_every_weight_format(capsys: pytest.CaptureFixture[str]) -> None:
    from vramplan.cli import main

    assert main(["infer", "--model", "llama2-7b", "--adapter-rank", "16", "--compare", "--gpu", "rtx4090",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["plan"]["quant"] for r in rows] == ["nf4", "int8", "none", "merged"]
    assert rows[3]["adapter_bytes"] == 0 and rows[0]["peak_bytes"] < rows[3]["peak_bytes"]
    assert main(["infer", "--model", "llama2-7b", "--gpu", "rtx4090"]) == 0
    assert "fits on rtx4090" in capsys.readouterr().out


TRACED = {
    "llama2-7b-merged-b2-4k": ("llama2-7b", {"quant": "merged", "batch": 2, "context": 4096, "new_tokens": 96}),
    "llama3.1-8b-lora-8k": ("llama3.1-8b", {"quant": "none", "rank": 16, "targets": "all-linear", "context": 8192,
                                            "new_tokens": 192}),
    "mistral-7b-past-window": ("mistral-7b", {"quant": "merged", "context": 8192, "new_tokens": 192}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TRACED))
def test_prefill_traced_at_full_size(case: str) -> None:
    """generate's prefill forward at full size under FakeTensorMode (`measure.generate.trace_prefill`): the
    estimate less generate's own int64 bookkeeping, plus the registered prompt ids."""
    from vramplan.measure.generate import trace_prefill

    name, options = TRACED[case]
    spec, plan = resolve_model(name), make_inference_plan(**options)
    est = estimate_inference(spec, plan)
    peak, kv = trace_prefill(spec.config, plan)
    expected = est.prefill_peak_bytes - est.ids_bytes - est.dequant_scratch_bytes + plan.batch * plan.prompt * 8
    assert kv == est.prefill_kv_bytes
    assert expected == pytest.approx(peak, rel=1e-3)
