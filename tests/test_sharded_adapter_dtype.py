"""The sharded engines price LoRA adapters in the dtype the trainer leaves them in (`trainers.adapter_bytes`).

TRL's SFTTrainer casts a quantized model's trainable parameters to bf16 after `get_peft_model`
(sft_trainer.py, `_is_quantized_model`); the FSDP/ZeRO-3 partition priced them as fp32 while the single-GPU
step counted bf16, so the engines took away more adapter bytes than there were: `lora_adapters` came out
negative (llama2-70b QLoRA, 2 GPUs, FSDP with parameter offload: -1.54 GiB) and so did the load and optimizer
phases, while the peak was 1.5 GiB low. Found when records began refusing negative sizes.
"""

from __future__ import annotations

import pytest

from vramplan.api import estimate
from vramplan.plan import make_plan

GRID = [(trainer, sharding, offload) for trainer in ("hf", "trl-sft", "trl-dpo")
        for sharding in ("fsdp", "fsdp_grad_op", "zero3") for offload in ("none", "params")]


@pytest.mark.parametrize(("trainer", "sharding", "offload"), GRID)
def test_per_gpu_adapters_are_the_shard_in_the_trainers_dtype(trainer, sharding, offload):
    plan = make_plan(method="qlora", rank=64, targets="all-linear", gpus=4, sharding=sharding, offload=offload,
                     quant_storage="bf16", trainer=trainer)
    one = estimate("llama-7b", plan.replace(gpus=1, sharding=None, offload="none", quant_storage=None,
                                            kbit_upcast=plan.kbit_upcast))
    per_gpu = estimate("llama-7b", plan)
    assert min(per_gpu.phases.values()) >= 0 and min(per_gpu.components.items_bytes().values()) >= 0
    if offload == "params" or sharding == "zero3":  # host RAM / ZeRO-3's partitions (priced as base weights)
        assert per_gpu.components.lora_adapters == 0
    else:  # rank 0's shard: a quarter of the single-GPU adapters, up to the padding of each tensor's rows
        assert per_gpu.components.lora_adapters == pytest.approx(one.components.lora_adapters / 4, rel=0.01)


@pytest.mark.parametrize("trainer", ["hf", "trl-sft"])
def test_zero2_holds_the_adapters_in_the_engines_16_bits(trainer):
    """DeepSpeed casts the module to bf16 (`module.bfloat16()`): fp32 adapters halve, TRL's bf16 ones stay."""
    plan = make_plan(method="qlora", rank=64, targets="all-linear", gpus=4, sharding="zero2", trainer=trainer)
    one = estimate("llama-7b", plan.replace(gpus=1, sharding=None))
    per_gpu = estimate("llama-7b", plan)
    scale = 2 / (4 if trainer == "hf" else 2)
    assert per_gpu.components.lora_adapters == one.components.lora_adapters * scale


def test_the_70b_recipe_under_trl_keeps_every_size_positive():
    plan = make_plan(method="qlora", rank=64, targets="all-linear", seq=4096, grad_accum=8, optimizer="adamw_fused",
                     gpus=2, sharding="fsdp", offload="params", trainer="trl-sft")
    e = estimate("llama2-70b", plan)
    assert e.components.lora_adapters == 0 and e.phases["load"] > 0 and e.phases["optimizer"] > 0
