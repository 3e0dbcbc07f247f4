"""The one plan description and the one vocabulary of engine names."""

from __future__ import annotations

import pytest

from vramplan.plan import make_plan
from vramplan.report.plan_words import as_plan, method_words, per_gpu_words, plan_summary, run_words
from vramplan.vocab import ENGINE_NAMES, OFFLOADS, SHARDINGS, engine_words


def test_summary_names_every_setting_of_a_qlora_plan():
    plan = make_plan(method="qlora", rank=16, seq=2048, batch=2)
    assert plan_summary(plan) == (f"qlora r=16 targets={plan.targets} nf4+dq, batch 2 x seq 2048, grad-ckpt, "
                                  f"{plan.attn}, {plan.optimizer}")


def test_summary_names_dtypes_only_off_the_default():
    assert "weights" not in plan_summary(make_plan(method="full"))
    mixed = make_plan(method="full", param_dtype="fp32", mixed_precision="fp16")
    assert ", fp32 weights + fp16 autocast," in plan_summary(mixed)


@pytest.mark.parametrize("sharding", SHARDINGS)
@pytest.mark.parametrize("offload", OFFLOADS)
def test_every_engine_has_one_name(sharding, offload):
    words = engine_words(sharding, offload)
    assert words.startswith(ENGINE_NAMES[sharding]) and "offload" in words or offload == "none"


def test_multi_gpu_words_use_the_engine_names():
    plan = make_plan(method="lora", gpus=4, sharding="fsdp", offload="params", optimizer="adamw")
    assert per_gpu_words(plan.parallelism, plan.gpus, plan.offload) == \
        f" per GPU (rank 0 of 4, {ENGINE_NAMES['fsdp']}, offload params)"
    assert run_words(plan).startswith(f"4 GPUs with {ENGINE_NAMES['fsdp']} + CPU offload")
    assert per_gpu_words("none", 1, "none") == ""


def test_a_plans_json_reads_back_typed():
    plan = make_plan(method="lora", rank=64, targets="all-linear")
    assert as_plan(plan.to_dict()) == plan and as_plan(plan) is plan
    assert method_words(plan) == "LoRA (r=64 on all-linear targets) on the bf16 base"
