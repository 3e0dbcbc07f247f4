"""axolotl: one test per mapped field. The oracle is axolotl's source at the lines each docstring names (axolotl
is not installed here): its schema defaults, `resolve_dtype`, `normalize_config`, `ModelLoader`."""

from __future__ import annotations

import pytest

from vramplan.configs import ConfigReadError

BASE = "base_model: meta-llama/Llama-3.1-8B\n"
QLORA = BASE + "adapter: qlora\nload_in_4bit: true\n"


def test_defaults_are_axolotls_not_vramplans(read):
    """schemas/config.py sequence_len=512; training.py micro_batch_size=1, gradient_accumulation_steps=1,
    optimizer adamw_torch_fused; gradient_checkpointing False; no bf16/fp16 -> float32 (resolve_dtype)."""
    r = read(BASE)
    assert r.model == "meta-llama/Llama-3.1-8B" and r.format == "axolotl"
    assert r.plan_options == {"trainer": "hf", "method": "full", "param_dtype": "fp32", "seq": 512, "batch": 1,
                              "grad_accum": 1, "grad_ckpt": False, "attn": "sdpa", "optimizer": "adamw_fused"}


@pytest.mark.parametrize("text, field, value", [
    ("adapter: lora\n", "method", "lora"),
    ("adapter: qlora\nload_in_4bit: true\n", "method", "qlora"),
    ("bf16: true\n", "param_dtype", "bf16"),
    ("bf16: auto\n", "param_dtype", "bf16"),
    ("fp16: true\n", "param_dtype", "fp16"),
    ("bf16: false\n", "param_dtype", "fp32"),
    ("adapter: lora\nlora_r: 64\n", "rank", 64),
    ("adapter: lora\nlora_alpha: 128\n", "alpha", 128.0),
    ("adapter: lora\nlora_dropout: 0.1\n", "lora_dropout", 0.1),
    ("adapter: lora\nlora_target_linear: true\n", "targets", "all-linear"),
    ("adapter: lora\nlora_target_modules: [q_proj, v_proj]\n", "targets", "q_proj,v_proj"),
    ("sequence_len: 8192\n", "seq", 8192),
    ("micro_batch_size: 4\n", "batch", 4),
    ("gradient_accumulation_steps: 16\n", "grad_accum", 16),
    ("gradient_checkpointing: true\n", "grad_ckpt", True),
    ("gradient_checkpointing: true\n", "ckpt_reentrant", True),  # normalize_config
    ("gradient_checkpointing: true\ngradient_checkpointing_kwargs: {use_reentrant: false}\n", "ckpt_reentrant", False),
    ("flash_attention: true\n", "attn", "flash_attention_2"),
    ("sdp_attention: true\n", "attn", "sdpa"),
    ("attn_implementation: eager\n", "attn", "eager"),
    ("optimizer: paged_adamw_8bit\n", "optimizer", "paged_adamw_8bit"),
    ("optimizer: adamw_bnb_8bit\n", "optimizer", "adamw_8bit"),
    ("optimizer: adamw_torch\n", "optimizer", "adamw"),
    ("fsdp_version: 2\nfsdp_config: {reshard_after_forward: true}\n", "sharding", "fsdp"),
    ("fsdp_version: 2\nfsdp_config: {reshard_after_forward: false}\n", "sharding", "fsdp_grad_op"),
    ("fsdp: [full_shard, auto_wrap]\n", "sharding", "fsdp"),
    ("fsdp_version: 2\nfsdp_config: {offload_params: true}\n", "offload", "params"),
    ("deepspeed: {zero_optimization: {stage: 3}}\n", "sharding", "zero3"),
])
def test_mapped_field(read, text, field, value):
    assert read(BASE + text).plan_options[field] == value


def test_qlora_quantization_config(read):
    """loaders/model.py: nf4, double quant, compute dtype = torch dtype, quant storage bfloat16."""
    opts = read(QLORA + "bf16: true\n").plan_options
    assert {k: opts[k] for k in ("quant", "double_quant", "compute_dtype", "quant_storage")} == {
        "quant": "nf4", "double_quant": True, "compute_dtype": "bf16", "quant_storage": "bf16"}
    opts = read(QLORA + "bnb_config_kwargs: {bnb_4bit_quant_type: fp4, "
                        "bnb_4bit_use_double_quant: false}\n").plan_options
    assert opts["quant"] == "fp4" and opts["double_quant"] is False and opts["compute_dtype"] == "fp32"


def test_deepspeed_file_is_followed(read, tmp_path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},'
                                      ' "train_micro_batch_size_per_gpu": "auto", "steps_per_print": 10}')
    r = read(BASE + "deepspeed: ds.json\nmicro_batch_size: 2\n")
    assert r.plan_options["sharding"] == "zero2" and r.plan_options["offload"] == "optimizer"
    assert r.plan_options["batch"] == 2 and "deepspeed.steps_per_print" in r.ignored
    assert r.files[-1].endswith("ds.json")


@pytest.mark.parametrize("text, field", [
    ("adapter: lora\nlora_modules_to_save: [score]\n", "lora_modules_to_save"),
    ("adapter: qlora\nload_in_4bit: true\nload_in_8bit: true\n", "load_in_8bit"),
    ("rl: dpo\n", "rl"),
    ("torch_compile: true\n", "torch_compile"),
    ("liger_fused_linear_cross_entropy: true\n", "liger_rope"),  # a per-kernel selection (tests/test_liger.py)
    ("gradient_checkpointing: offload\n", "gradient_checkpointing"),
    ("activation_offloading: true\n", "activation_offloading"),
    ("val_set_size: 0.05\nmicro_batch_size: 2\neval_batch_size: 4\n", "eval_batch_size"),
    ("adapter: qlora\n", "adapter"),
    ("adapter: lora\nload_in_4bit: true\n", "load_in_4bit"),
    ("load_in_8bit: true\n", "load_in_8bit"),
    ("deepspeed: {zero_optimization: {stage: 2, reduce_bucket_size: 500000000}}\n", "reduce_bucket_size"),
])
def test_unmodelled_field_is_an_error_naming_it(read, text, field):
    with pytest.raises(ConfigReadError, match=field):
        read(BASE + text)


def test_an_eval_batch_no_larger_than_the_training_batch_is_fine(read):
    r = read(BASE + "val_set_size: 0.05\nmicro_batch_size: 2\neval_batch_size: 2\n")
    assert r.plan_options["batch"] == 2 and "eval_batch_size" not in r.ignored
    assert "eval_batch_size" in read(BASE + "eval_batch_size: 8\n").ignored  # no eval set: no evaluation


@pytest.mark.parametrize("text, field, value", [
    ("adapter: lora\npeft_use_dora: true\n", "use_dora", True),  # LoraConfig(use_dora=cfg.peft_use_dora)
    # ModelLoader: adapter lora + load_in_8bit -> BitsAndBytesConfig(load_in_8bit=True); resolve_dtype: fp16
    ("adapter: lora\nload_in_8bit: true\n", "load_in_8bit", True),
    ("adapter: lora\nload_in_8bit: true\n", "param_dtype", "fp16"),
])
def test_dora_and_8bit_are_mapped(read, text, field, value):
    assert read(BASE + text).plan_options[field] == value


def test_off_values_of_unmodelled_fields_are_fine(read):
    r = read(BASE + "peft_use_dora: false\ntorch_compile: false\nrl: null\n")
    assert r.plan_options["method"] == "full"


def test_other_fields_are_listed_as_ignored(read):
    r = read(BASE + "learning_rate: 0.0002\nwandb_project: x\ntf32: true\n")
    assert r.ignored == ["learning_rate", "wandb_project", "tf32"]


def test_bad_optimizer_names_the_field_and_suggests(read):
    with pytest.raises(ConfigReadError, match=r"optimizer: .*'paged_adamw_8bt'.*did you mean paged_adamw_8bit"):
        read(BASE + "optimizer: paged_adamw_8bt\n")
