"""TRL's CLI YAML, HF TrainingArguments JSON, peft adapter_config.json and BitsAndBytesConfig JSON. These
libraries are installed, so the slow tests parse the same files with them and compare field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramplan.configs import ConfigReadError, read_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"
TRL = "model_name_or_path: Qwen/Qwen2.5-1.5B\ndataset_name: x\n"


def test_trl_defaults(read):
    """SFTConfig: max_length 1024, gradient_checkpointing on, bf16 unless fp16; ModelConfig dtype float32 (so
    bf16 is autocast over fp32 weights); TrainingArguments batch 8, adamw_torch_fused; no kwargs -> not reentrant."""
    r = read(TRL)
    assert r.format == "trl"
    assert r.plan_options == {"method": "full", "batch": 8, "grad_accum": 1, "optimizer": "adamw_fused",
                              "grad_ckpt": True, "ckpt_reentrant": False, "param_dtype": "fp32",
                              "mixed_precision": "bf16", "trainer": "trl-sft", "loss_type": "nll", "seq": 1024,
                              "attn": "sdpa"}


@pytest.mark.parametrize("text, field, value", [
    ("use_peft: true\n", "method", "lora"),
    ("use_peft: true\nuse_dora: true\n", "use_dora", True),  # get_peft_config: use_dora=model_args.use_dora
    ("use_peft: true\nload_in_8bit: true\n", "load_in_8bit", True),  # get_quantization_config: load_in_8bit
    ("use_peft: true\nload_in_4bit: true\ndtype: bfloat16\n", "method", "qlora"),
    ("use_peft: true\n", "rank", 16), ("use_peft: true\nlora_r: 64\n", "rank", 64),
    ("use_peft: true\n", "alpha", 32.0), ("use_peft: true\n", "lora_dropout", 0.05),
    ("use_peft: true\n", "targets", "default"),
    ("use_peft: true\nlora_target_modules: [q_proj, v_proj]\n", "targets", "q_proj,v_proj"),
    ("use_peft: true\nload_in_4bit: true\ndtype: bfloat16\n", "double_quant", False),
    ("use_peft: true\nload_in_4bit: true\ndtype: bfloat16\nuse_bnb_nested_quant: true\n", "double_quant", True),
    ("use_peft: true\nload_in_4bit: true\ndtype: bfloat16\n", "compute_dtype", "bf16"),
    ("dtype: bfloat16\n", "param_dtype", "bf16"),
    ("max_length: 4096\n", "seq", 4096),
    ("per_device_train_batch_size: 2\n", "batch", 2),
    ("gradient_accumulation_steps: 4\n", "grad_accum", 4),
    ("gradient_checkpointing: false\n", "grad_ckpt", False),
    ("gradient_checkpointing_kwargs: {use_reentrant: true}\n", "ckpt_reentrant", True),
    ("attn_implementation: flash_attention_2\n", "attn", "flash_attention_2"),
    ("optim: adamw_8bit\n", "optimizer", "adamw_8bit"),
    ("loss_type: dft\n", "loss_type", "dft"),
    ("loss_type: chunked_nll\n", "loss_type", "nll"),
    ("packing: true\n", "packing", True),  # 'bfd' turns padding_free on
    ("padding_free: true\n", "packing", True),
])
def test_trl_mapped_field(read, text, field, value):
    assert read(TRL + text).plan_options[field] == value


@pytest.mark.parametrize("text, field", [
    ("liger_kernel_config: {rope: false}\n", "liger_kernel_config"), ("load_in_8bit: true\n", "load_in_8bit"),
    ("use_peft: true\nload_in_8bit: true\nload_in_4bit: true\n", "load_in_8bit"),
    ("activation_checkpointing_kwargs: {offload: true}\n", "offload"),
    ("beta: 0.1\n", "beta"), ("loss_type: sigmoid\n", "loss_type"),
])
def test_trl_unmodelled_field_is_an_error(read, text, field):
    with pytest.raises(ConfigReadError, match=field):
        read(TRL + text)


def test_trl_wrapped_packing_is_plain_rows(read):
    assert "packing" not in read(TRL + "packing: true\npacking_strategy: wrapped\n").plan_options


@pytest.mark.parametrize("text, field", [("packing_strategy: best\n", "packing_strategy"),
                                         ("packing: maybe\n", "packing")])
def test_trl_bad_packing_is_an_error(read, text, field):
    with pytest.raises(ConfigReadError, match=field):
        read(TRL + text)


def test_peft_and_bnb_files_make_qlora():
    r = read_config([EXAMPLES / "hf-training-args.json", EXAMPLES / "adapter_config.json",
                     EXAMPLES / "bnb_config.json"])
    assert r.format == "hf+peft+bnb" and r.model == "meta-llama/Llama-3.1-8B"
    assert r.plan_options["method"] == "qlora" and r.plan_options["rank"] == 16 and r.plan_options["batch"] == 4


def test_files_that_disagree_are_an_error(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "ds.json"
    a.write_text('{"per_device_train_batch_size": 4, "output_dir": "o"}')
    b.write_text('{"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 2}')
    with pytest.raises(ConfigReadError, match="batch=2.*per_device_train_batch_size"):
        read_config([a, b])


@pytest.mark.slow
def test_trl_reading_matches_trl_parser():
    """The example parsed by trl's own TrlParser (ScriptArguments, SFTConfig, ModelConfig)."""
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    path = EXAMPLES / "trl-sft-qwen25-1.5b.yaml"
    _, args, model = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true"])
    opts = read_config(path).plan_options
    assert opts["batch"] == args.per_device_train_batch_size and opts["seq"] == args.max_length
    assert opts["grad_accum"] == args.gradient_accumulation_steps and opts["grad_ckpt"] == args.activation_checkpointing
    assert opts["ckpt_reentrant"] is bool((args.activation_checkpointing_kwargs or {}).get("use_reentrant", False))
    assert f"{opts['optimizer']}".replace("adamw_fused", "adamw_torch_fused") == args.optim.value
    assert (opts["rank"], opts["alpha"], opts["lora_dropout"]) == (model.lora_r, model.lora_alpha, model.lora_dropout)
    assert opts["targets"] == model.lora_target_modules and opts["param_dtype"] == "bf16" == model.dtype[:1] + "f16"


@pytest.mark.slow
def test_hf_peft_bnb_reading_matches_the_libraries(tmp_path):
    """TrainingArguments(**json), LoraConfig.from_pretrained, BitsAndBytesConfig.from_dict."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainingArguments

    args = TrainingArguments(**json.loads((EXAMPLES / "hf-training-args.json").read_text()), use_cpu=True)
    (tmp_path / "adapter_config.json").write_text((EXAMPLES / "adapter_config.json").read_text())
    lora = LoraConfig.from_pretrained(str(tmp_path))
    bnb = BitsAndBytesConfig.from_dict(json.loads((EXAMPLES / "bnb_config.json").read_text()))
    opts = read_config([EXAMPLES / "hf-training-args.json", EXAMPLES / "adapter_config.json",
                        EXAMPLES / "bnb_config.json"]).plan_options
    assert (opts["batch"], opts["grad_accum"]) == (args.per_device_train_batch_size, args.gradient_accumulation_steps)
    assert opts["optimizer"] == args.optim.value and opts["grad_ckpt"] == args.activation_checkpointing
    assert opts["ckpt_reentrant"] == args.activation_checkpointing_kwargs["use_reentrant"]
    assert (opts["rank"], opts["alpha"], opts["lora_dropout"]) == (lora.r, lora.lora_alpha, lora.lora_dropout)
    assert set(opts["targets"].split(",")) == set(lora.target_modules)
    assert (opts["quant"], opts["double_quant"]) == (bnb.bnb_4bit_quant_type, bnb.bnb_4bit_use_double_quant)
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16 and opts["compute_dtype"] == "bf16"
    assert bnb.bnb_4bit_quant_storage == torch.uint8 and opts["quant_storage"] == "uint8"


HF = '{"output_dir": "o", "per_device_train_batch_size": 2, %s}'


@pytest.mark.parametrize("fields, field, value", [
    ('"gradient_accumulation_steps": 8', "grad_accum", 8),
    ('"optim": "adamw_torch"', "optimizer", "adamw"),
    ('"activation_checkpointing": true', "grad_ckpt", True),
    ('"gradient_checkpointing": true', "ckpt_reentrant", False),  # transformers 5: use_reentrant False
    ('"gradient_checkpointing": true, "gradient_checkpointing_kwargs": {"use_reentrant": true}',
     "ckpt_reentrant", True),
    ('"fsdp": "full_shard auto_wrap"', "sharding", "fsdp"),
    ('"fsdp": "shard_grad_op"', "sharding", "fsdp_grad_op"),
    ('"fsdp": "full_shard offload"', "offload", "params"),
    ('"fsdp": true, "fsdp_config": {"reshard_after_forward": false}', "sharding", "fsdp_grad_op"),
    ('"deepspeed": {"zero_optimization": {"stage": 3}}', "sharding", "zero3"),
])
def test_training_args_mapped_field(read, fields, field, value):
    r = read(HF % fields, "args.json")
    assert r.format == "hf" and r.plan_options[field] == value and r.plan_options["batch"] == 2


def test_training_args_eval_batch_no_larger_than_training_is_fine(read):
    r = read(HF % '"eval_strategy": "steps", "per_device_eval_batch_size": 2', "args.json")
    assert "per_device_eval_batch_size" not in r.ignored
    assert "per_device_eval_batch_size" in read(HF % '"per_device_eval_batch_size": 16', "args.json").ignored


def test_training_args_follow_a_deepspeed_file(read, tmp_path):
    (tmp_path / "z2.json").write_text('{"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}')
    r = read(HF % '"deepspeed": "z2.json"', "args.json")
    assert r.plan_options["sharding"] == "zero2" and r.files[-1].endswith("z2.json")


@pytest.mark.parametrize("fields, field", [
    ('"torch_compile": true', "torch_compile"), ('"liger_kernel_config": {"rope": false}', "liger_kernel_config"),
    ('"auto_find_batch_size": true', "auto_find_batch_size"), ('"fsdp": "hybrid_shard"', "hybrid_shard"),
    ('"gradient_checkpointing": true, "gradient_checkpointing_kwargs": {"every_n_layers": 2}', "every_n_layers"),
    ('"optim": "galore_adamw"', "galore_adamw"),
    ('"eval_strategy": "steps"', "per_device_eval_batch_size"),  # TrainingArguments' default eval batch 8 > 2
    ('"do_eval": true, "per_device_eval_batch_size": 4', "per_device_eval_batch_size"),
])
def test_training_args_unmodelled(read, fields, field):
    with pytest.raises(ConfigReadError, match=field):
        read(HF % fields, "args.json")


PEFT = '{"peft_type": "LORA", "base_model_name_or_path": "Qwen/Qwen2.5-0.5B", %s}'


@pytest.mark.parametrize("fields, field, value", [
    ('"r": 32', "rank", 32), ('"lora_alpha": 64', "alpha", 64.0), ('"lora_dropout": 0.1', "lora_dropout", 0.1),
    ('"target_modules": ["q_proj", "v_proj"]', "targets", "q_proj,v_proj"),
    ('"target_modules": "all-linear"', "targets", "all-linear"),
    ('"target_modules": null', "targets", "default"),
    ('"r": 8', "method", "lora"), ('"use_dora": true', "use_dora", True),
])
def test_peft_mapped_field(read, fields, field, value):
    r = read(PEFT % fields, "adapter_config.json")
    assert r.format == "peft" and r.model == "Qwen/Qwen2.5-0.5B" and r.plan_options[field] == value


@pytest.mark.parametrize("fields, field", [
    ('"modules_to_save": ["score"]', "modules_to_save"),
    ('"layers_to_transform": [0, 1]', "layers_to_transform"), ('"rank_pattern": {"q_proj": 4}', "rank_pattern"),
])
def test_peft_unmodelled(read, fields, field):
    with pytest.raises(ConfigReadError, match=field):
        read(PEFT % fields, "adapter_config.json")


def test_peft_other_methods_are_refused(read):
    with pytest.raises(ConfigReadError, match="peft_type: IA3"):
        read('{"peft_type": "IA3"}', "adapter_config.json")


BNB = '{"quant_method": "bitsandbytes", "load_in_4bit": true%s}'


@pytest.mark.parametrize("fields, field, value", [
    # BitsAndBytesConfig(load_in_4bit=True)'s own defaults: fp4, no double quant, fp32 compute, uint8 storage
    ("", "quant", "fp4"), ("", "double_quant", False), ("", "compute_dtype", "fp32"), ("", "quant_storage", "uint8"),
    (', "bnb_4bit_quant_type": "nf4"', "quant", "nf4"),
    (', "bnb_4bit_use_double_quant": true', "double_quant", True),
    (', "bnb_4bit_compute_dtype": "float16"', "compute_dtype", "fp16"),
    (', "bnb_4bit_quant_storage": "bfloat16"', "quant_storage", "bf16"),
    ("", "method", "qlora"),
])
def test_bnb_mapped_field(read, fields, field, value):
    r = read(BNB % fields, "bnb.json")
    assert r.format == "bnb" and r.plan_options[field] == value


@pytest.mark.parametrize("fields, field", [
    (', "llm_int8_skip_modules": ["lm_head"]', "llm_int8_skip_modules"),
])
def test_bnb_unmodelled(read, fields, field):
    with pytest.raises(ConfigReadError, match=field):
        read(BNB % fields, "bnb.json")


@pytest.mark.parametrize("fields, field", [
    (', "llm_int8_skip_modules": ["lm_head"]', "llm_int8_skip_modules"),
    (', "llm_int8_has_fp16_weight": true', "llm_int8_has_fp16_weight"), (', "load_in_4bit": true', "load_in_4bit"),
])
def test_bnb_8bit_unmodelled(read, fields, field):
    with pytest.raises(ConfigReadError, match=field):
        read(f'{{"quant_method": "bitsandbytes", "load_in_8bit": true{fields}}}', "bnb.json")


def test_bnb_8bit_is_lora_on_an_int8_base(read):
    r = read('{"quant_method": "bitsandbytes", "load_in_8bit": true, "load_in_4bit": false, '
             '"llm_int8_threshold": 6.0}', "bnb.json")
    assert r.plan_options == {"method": "lora", "load_in_8bit": True}


@pytest.mark.slow
def test_bnb_defaults_match_transformers(read):
    import torch
    from transformers import BitsAndBytesConfig

    real = BitsAndBytesConfig(load_in_4bit=True)
    opts = read(BNB % "", "bnb.json").plan_options
    assert (opts["quant"], opts["double_quant"]) == (real.bnb_4bit_quant_type, real.bnb_4bit_use_double_quant)
    assert real.bnb_4bit_compute_dtype == torch.float32 and opts["compute_dtype"] == "fp32"
    assert real.bnb_4bit_quant_storage == torch.uint8 and opts["quant_storage"] == "uint8"
