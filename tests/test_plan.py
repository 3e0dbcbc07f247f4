"""The training plan's field groups (vramplan.vocab, read by TrainingPlan, the CLI and the search): which fields
belong to which method. The oracle is the libraries: every adapter field is a peft `LoraConfig` parameter, every
QLoRA field a `BitsAndBytesConfig` 4-bit parameter or `prepare_model_for_kbit_training`'s upcast."""

from __future__ import annotations

import inspect

import pytest

from vramplan.errors import PlanError
from vramplan.plan import TrainingPlan, make_plan
from vramplan.vocab import ADAPTER_FIELDS, INT8_FIELDS, METHODS, QLORA_FIELDS, fields_outside, methods_taking

# plan field -> the library parameter it sets
LORA_CONFIG = {"rank": "r", "alpha": "lora_alpha", "targets": "target_modules", "lora_dropout": "lora_dropout",
               "use_dora": "use_dora", "trainable_tokens": "trainable_token_indices",
               "modules_to_save": "modules_to_save"}
BNB_CONFIG = {"quant": "bnb_4bit_quant_type", "double_quant": "bnb_4bit_use_double_quant",
              "compute_dtype": "bnb_4bit_compute_dtype", "quant_storage": "bnb_4bit_quant_storage",
              "load_in_8bit": "load_in_8bit"}
# a value other than the field's default, valid for the methods that take it
SET = {"rank": 16, "alpha": 32.0, "targets": "attention", "lora_dropout": 0.1, "use_dora": True,
       "trainable_tokens": 4, "modules_to_save": "lm_head", "quant": "fp4", "double_quant": False,
       "compute_dtype": "fp16", "kbit_upcast": False, "quant_storage": "bf16", "load_in_8bit": True}


def test_adapter_fields_are_lora_config_parameters():
    from peft import LoraConfig

    assert set(LORA_CONFIG) == set(ADAPTER_FIELDS)
    assert set(LORA_CONFIG.values()) <= set(LoraConfig.__dataclass_fields__)


def test_quantization_fields_are_bitsandbytes_config_parameters():
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    params = inspect.signature(BitsAndBytesConfig.__init__).parameters
    assert set(QLORA_FIELDS) | set(INT8_FIELDS) == set(BNB_CONFIG) | {"kbit_upcast"}
    assert set(BNB_CONFIG.values()) <= set(params)
    assert "use_gradient_checkpointing" in inspect.signature(prepare_model_for_kbit_training).parameters


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("field", sorted(SET))
def test_a_plan_refuses_exactly_the_fields_its_method_does_not_take(method, field):
    extra = {"load_in_8bit": True} if field == "kbit_upcast" and method == "lora" else {}
    outside = field in fields_outside(method, bool(extra))
    if field == "load_in_8bit" or extra:
        outside = method != "lora"  # LLM.int8 is a LoRA base; with it LoRA takes the kbit upcast too
    if outside:
        with pytest.raises(PlanError, match="applies to|is a LoRA base"):
            make_plan(method=method, **extra, **{field: SET[field]})
    else:
        assert getattr(make_plan(method=method, **extra, **{field: SET[field]}), field) == SET[field]


def test_methods_taking_narrows_to_the_methods_that_take_every_field():
    assert methods_taking([]) == ("full", "lora", "qlora")
    assert methods_taking(["quant_storage"]) == ("qlora",)
    assert methods_taking(["modules_to_save", "grad_ckpt"]) == ("lora", "qlora")
    assert methods_taking(["load_in_8bit", "kbit_upcast"]) == ("lora",)
    assert methods_taking(["load_in_8bit", "quant"]) == ()


def test_for_method_resets_what_the_new_method_does_not_take():
    qlora = make_plan(method="qlora", gpus=2, sharding="fsdp", quant_storage="bf16", rank=32, double_quant=False)
    lora = qlora.for_method("lora")
    assert (lora.method, lora.rank, lora.quant_storage, lora.quant, lora.double_quant) == ("lora", 32, None, None, None)
    full = qlora.for_method("full", optimizer="adamw")
    assert all(getattr(full, f) == TrainingPlan.default_of(f) for f in fields_outside("full"))
    back = full.for_method("qlora")  # make_plan fills QLoRA's defaults again
    assert (back.quant, back.double_quant, back.rank) == ("nf4", True, 8)
