"""`vramplan merge` against peft's own `merge_and_unload`, run under the live-bytes tracker on CPU
(`vramplan.measure.merge`): the plan checked is a merge on the host (`device="cpu"`), where peft's 4-bit merge
copies nothing between devices (slow tier: each case builds a model)."""

from __future__ import annotations

import json

import pytest

from vramplan.errors import PlanError
from vramplan.merge import MergeEstimate, MergePlan, estimate_merge
from vramplan.models import resolve_model, spec_from_config

SMALL = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 4096,
         "tie_word_embeddings": False, "pad_token_id": 0}

CASES = {
    "16bit-all-linear": {"method": "16bit", "rank": 8, "targets": "all-linear"},
    "16bit-default": {"method": "16bit", "rank": 4},
    "4bit-all-linear": {"method": "4bit", "rank": 8, "targets": "all-linear"},
    "4bit-no-double-quant": {"method": "4bit", "rank": 8, "targets": "attention", "double_quant": False},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_merge_peak_and_merged_size_match_peft(case: str) -> None:
    from vramplan.measure.merge import measure_merge

    plan = MergePlan(**CASES[case], device="cpu")
    est = estimate_merge(spec_from_config(SMALL, case, "test"), plan)
    measured = measure_merge(SMALL, plan)
    assert est.model_bytes + est.adapter_bytes == measured.weights_bytes
    assert est.merged_model_bytes == measured.after_bytes
    # within 0.05% below (bitsandbytes' 68 bytes of per-call scalars without double quant) and 1% above
    assert measured.peak_bytes * 0.9995 <= est.merge_peak_bytes <= measured.peak_bytes * 1.01


def test_4bit_merge_stays_4bit_and_16bit_is_the_full_model() -> None:
    spec = resolve_model("llama2-7b")
    four = estimate_merge(spec, MergePlan(method="4bit", targets="all-linear"))
    sixteen = estimate_merge(spec, MergePlan(method="16bit", targets="all-linear"))
    assert four.still_4bit and not sixteen.still_4bit
    assert four.disk_bytes < sixteen.disk_bytes / 3
    assert sixteen.disk_bytes == spec.num_params * 2  # bf16 weights (the rotary inv_freq buffers are not saved)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    from vramplan.cli import main

    assert main(["merge", "--model", "llama2-70b", "--gpu", "rtx4090", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False and out["gpu_peak_bytes"] > out["model_bytes"]
    assert main(["merge", "--model", "llama2-7b", "--max-shard-gb", "0"]) == 2


@pytest.mark.parametrize("options, line", [
    ({"rank": 0}, "rank: Input should be greater than 0"),
    ({"max_shard_bytes": -1}, "max_shard_bytes: Input should be greater than 0"),
    ({"method": "8bit"}, "method: '8bit' is not one of: 4bit, 16bit"),
])
def test_bad_merge_plans_are_one_line_plan_errors(options: dict, line: str) -> None:
    with pytest.raises(PlanError) as exc:
        MergePlan(**options)
    assert str(exc.value).startswith(line) and "\n" not in str(exc.value)


def test_estimate_json_reads_back_as_the_same_records() -> None:
    plan = MergePlan(method="4bit", rank=8, targets="attention", max_shard_bytes=10**8)
    est = estimate_merge(resolve_model("qwen2.5-0.5b"), plan)
    data = json.loads(json.dumps(est.to_dict()))
    assert est.shards > 1 and MergeEstimate.from_dict(data) == est and MergePlan.from_dict(data["plan"]) == plan
