"""LLaMA-Factory: one test per mapped field. The oracle is LLaMA-Factory's source (not installed here):
`hparams/*_args.py` defaults, `hparams/parser.get_train_args`, `model/adapter.init_adapter`,
`model/model_utils/{quantization,checkpointing,attention}.py`."""

from __future__ import annotations

import pytest

from vramplan.configs import ConfigReadError

BASE = "model_name_or_path: Qwen/Qwen2.5-7B\nstage: sft\n"


def test_defaults_are_llamafactorys(read):
    """finetuning_type lora, lora_rank 8, alpha 2 x rank, dropout 0, lora_target all, cutoff_len 2048; HF
    per_device_train_batch_size 8 and adamw_torch_fused; checkpointing on and reentrant (use_reentrant_gc)."""
    r = read(BASE + "bf16: true\n")
    assert r.format == "llamafactory" and r.model == "Qwen/Qwen2.5-7B"
    assert r.plan_options == {"trainer": "hf", "method": "lora", "batch": 8, "grad_accum": 1,
                              "optimizer": "adamw_fused", "grad_ckpt": True, "param_dtype": "bf16", "rank": 8,
                              "alpha": 16.0, "lora_dropout": 0.0, "targets": "all-linear", "seq": 2048,
                              "ckpt_reentrant": True, "attn": "sdpa"}


@pytest.mark.parametrize("text, field, value", [
    ("finetuning_type: full\n", "method", "full"),
    ("quantization_bit: 4\n", "method", "qlora"),
    ("use_dora: true\n", "use_dora", True),  # FinetuningArguments.use_dora -> LoraConfig(use_dora=...)
    ("quantization_bit: 8\n", "method", "lora"),  # configure_quantization: BitsAndBytesConfig(load_in_8bit=True)
    ("quantization_bit: 8\n", "load_in_8bit", True),
    ("quantization_bit: 8\n", "kbit_upcast", False),  # no prepare_model_for_kbit_training
    ("quantization_bit: 4\nquantization_type: fp4\n", "quant", "fp4"),
    ("quantization_bit: 4\ndouble_quantization: false\n", "double_quant", False),
    ("quantization_bit: 4\n", "quant_storage", "bf16"),  # bnb_4bit_quant_storage = compute dtype
    ("quantization_bit: 4\n", "compute_dtype", "bf16"),
    ("quantization_bit: 4\n", "kbit_upcast", False),  # no prepare_model_for_kbit_training
    ("lora_rank: 32\n", "rank", 32),
    ("lora_rank: 32\n", "alpha", 64.0),
    ("lora_alpha: 8\n", "alpha", 8.0),
    ("lora_dropout: 0.1\n", "lora_dropout", 0.1),
    ("lora_target: q_proj,v_proj\n", "targets", "q_proj,v_proj"),
    ("cutoff_len: 4096\n", "seq", 4096),
    ("per_device_train_batch_size: 2\n", "batch", 2),
    ("gradient_accumulation_steps: 8\n", "grad_accum", 8),
    ("disable_gradient_checkpointing: true\n", "grad_ckpt", False),
    ("use_reentrant_gc: false\n", "ckpt_reentrant", False),
    ("flash_attn: fa2\n", "attn", "flash_attention_2"),
    ("flash_attn: disabled\n", "attn", "eager"),
    ("optim: paged_adamw_8bit\n", "optimizer", "paged_adamw_8bit"),
    ("deepspeed: {zero_optimization: {stage: 3}}\n", "sharding", "zero3"),
])
def test_mapped_field(read, text, field, value):
    assert read(BASE + "bf16: true\n" + text).plan_options[field] == value


def test_full_tuning_upcasts_trainable_weights_to_fp32(read):
    """init_adapter: cast_trainable_params_to_fp32 unless pure_bf16 (or ZeRO-3), under bf16 autocast."""
    opts = read(BASE + "finetuning_type: full\nbf16: true\n").plan_options
    assert (opts["param_dtype"], opts["mixed_precision"]) == ("fp32", "bf16")
    opts = read(BASE + "finetuning_type: full\npure_bf16: true\n").plan_options
    assert opts["param_dtype"] == "bf16" and "mixed_precision" not in opts
    opts = read(BASE + "finetuning_type: full\nbf16: true\ndeepspeed: {zero_optimization: {stage: 3}}\n").plan_options
    assert opts["param_dtype"] == "bf16" and "mixed_precision" not in opts


@pytest.mark.parametrize("text, field", [
    ("stage: dpo\n", "stage"), ("finetuning_type: freeze\n", "finetuning_type"),
    ("quantization_bit: 2\n", "quantization_bit"),
    ("additional_target: score\n", "additional_target"),
    ("use_unsloth: true\n", "use_unsloth"), ("use_galore: true\n", "use_galore"),
    ("upcast_lmhead_output: true\n", "upcast_lmhead_output"), ("torch_compile: true\n", "torch_compile"),
])
def test_unmodelled_field_is_an_error_naming_it(read, text, field):
    with pytest.raises(ConfigReadError, match=field):
        read("model_name_or_path: Qwen/Qwen2.5-7B\ntemplate: qwen\n" + text)


def test_other_fields_are_listed_as_ignored(read):
    r = read(BASE + "template: qwen\ndataset: alpaca_en_demo\nlearning_rate: 1.0e-4\n")
    assert r.ignored == ["template", "dataset", "learning_rate"]
