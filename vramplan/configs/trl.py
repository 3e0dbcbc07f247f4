"""TRL's CLI YAML (`trl sft --config sft.yaml`): `ScriptArguments` + `SFTConfig` + `ModelConfig` fields in one
mapping. Its TrainingArguments fields go through `hf.read_training_args`, with TRL's defaults:

- `SFTConfig` (trl 1.16 `trainer/sft_config.py`, `base_config.py`): `max_length` 1024, `gradient_checkpointing`
  on, `bf16` on unless `fp16` (`_BaseConfig.__post_init__`), `packing` bins of max_length tokens (batch x
  max_length tokens at most; 'bfd' and `padding_free` flatten them into one row: the plan's `packing`),
  `per_device_train_batch_size` 8;
- `ModelConfig` (`trainer/model_config.py`): `dtype` float32 (so bf16 is autocast over fp32 weights),
  `attn_implementation` (else transformers' default, sdpa), `use_peft` with `lora_r` 16, `lora_alpha` 32,
  `lora_dropout` 0.05, `lora_target_modules` (else peft's default for the architecture);
  `load_in_4bit` -> `get_quantization_config`: `bnb_4bit_compute_dtype` = dtype, `bnb_4bit_quant_type` nf4,
  `use_bnb_nested_quant` (off), `bnb_4bit_quant_storage` (uint8).
- `SFTTrainer` forces reentrant checkpointing for PEFT under ZeRO-3 (`_prepare_peft_model`); the plan's trainer is
  trl-sft (vramplan.estimator.trainers: the fused LM head, `loss_type` nll or dft).
"""

from __future__ import annotations

from pathlib import Path

from vramplan.configs import names
from vramplan.configs.fields import (
    ConfigReadError,
    FieldReader,
    as_bool,
    as_float,
    as_int,
)
from vramplan.configs.hf import read_training_args

REFUSED = {
    "lora_target_parameters": "LoRA on parameters",
    "beta": "a preference trainer (DPO/KTO: a reference model, chosen and rejected batches)",
    "max_prompt_length": "a preference trainer (DPO/KTO: a reference model, chosen and rejected batches)",
}
_LOSSES = {"nll": "nll", "chunked_nll": "nll", "dft": "dft"}  # SFTConfig.__post_init__: chunked_nll -> nll


def looks_like(data: dict) -> bool:
    return "model_name_or_path" in data and any(
        k in data for k in ("max_length", "use_peft", "dataset_name", "packing", "lora_r", "output_dir"))


def read(reader: FieldReader, base: Path) -> None:
    reader.model = reader.take_model("model_name_or_path")
    for key, why in REFUSED.items():
        reader.refuse_if_on(key, why)
    peft = as_bool(reader, "use_peft", reader.take("use_peft", False))
    four_bit = as_bool(reader, "load_in_4bit", reader.take("load_in_4bit", False))
    eight_bit = as_bool(reader, "load_in_8bit", reader.take("load_in_8bit", False))
    method = "qlora" if peft and four_bit else "lora" if peft else "full"
    if four_bit and not peft:
        reader.refuse("load_in_4bit", "4-bit weights without adapters (nothing trainable)")
    if eight_bit and (not peft or four_bit):  # ModelConfig.__post_init__ refuses 8 and 4 bits together
        reader.refuse("load_in_8bit", "8-bit weights without adapters" if not peft else "8-bit and 4-bit together")
    if eight_bit:  # get_quantization_config: BitsAndBytesConfig(load_in_8bit=True); SFTTrainer: no kbit upcast
        reader.set("load_in_8bit", True, "load_in_8bit")
    reader.set("method", method, "load_in_4bit" if method == "qlora" else "use_peft")
    bf16 = reader.data.get("bf16")
    if bf16 is None and not reader.data.get("fp16"):
        reader.data["bf16"] = True  # _BaseConfig.__post_init__: bf16 = not fp16
    autocast = read_training_args(reader, base, checkpointing=True)
    weights = names.dtype(reader, "dtype", reader.take("dtype", "float32"))
    reader.set("param_dtype", weights, "dtype")
    if autocast and weights == "fp32" and method != "qlora" and not eight_bit:
        reader.set("mixed_precision", autocast, "bf16" if autocast == "bf16" else "fp16")
    elif autocast and weights == "fp32":
        reader.note(f"{autocast} autocast over fp32 weights and compute dtype: estimated in fp32 (over)")
    if method != "full":
        reader.set("rank", as_int(reader, "lora_r", reader.take("lora_r", 16)), "lora_r")
        reader.set("alpha", as_float(reader, "lora_alpha", reader.take("lora_alpha", 32)), "lora_alpha")
        reader.set("lora_dropout", as_float(reader, "lora_dropout", reader.take("lora_dropout", 0.05)), "lora_dropout")
        if as_bool(reader, "use_dora", reader.take("use_dora", False)):  # DoRA is modelled (estimator/dora.py)
            reader.set("use_dora", True, "use_dora")
        reader.set("targets", names.targets(reader, "lora_target_modules", reader.take("lora_target_modules")),
                   "lora_target_modules")
        saved = names.modules_to_save(reader, "lora_modules_to_save", reader.take("lora_modules_to_save"))
        reader.set("modules_to_save", saved, "lora_modules_to_save")
    if method == "qlora":
        reader.set("quant", str(reader.take("bnb_4bit_quant_type", "nf4")), "bnb_4bit_quant_type")
        reader.set("double_quant", as_bool(reader, "use_bnb_nested_quant", reader.take("use_bnb_nested_quant", False)),
                   "use_bnb_nested_quant")
        reader.set("compute_dtype", weights, "dtype")
        storage = reader.take("bnb_4bit_quant_storage")
        reader.set("quant_storage", names.storage(reader, "bnb_4bit_quant_storage", storage) if storage else None,
                   "bnb_4bit_quant_storage")
        if reader.options.get("sharding") == "zero3" and reader.options.get("grad_ckpt"):
            reader.set("ckpt_reentrant", True, "gradient_checkpointing_kwargs")
    elif method == "lora" and reader.options.get("sharding") == "zero3" and reader.options.get("grad_ckpt"):
        reader.set("ckpt_reentrant", True, "gradient_checkpointing_kwargs")
    _loss(reader)
    reader.set("seq", as_int(reader, "max_length", reader.take("max_length", 1024)), "max_length")
    _packing(reader)
    # SFTConfig/DPOConfig.activation_offloading: `get_act_offloading_ctx_manager` around training_step
    reader.set("activation_offloading", as_bool(reader, "activation_offloading",
                                                reader.take("activation_offloading", False)) or None,
               "activation_offloading")
    attn = reader.take("attn_implementation")
    reader.set("attn", names.attention(reader, "attn_implementation", attn or "sdpa"), "attn_implementation")


def _packing(reader: FieldReader) -> None:
    """TRL 1.16 `SFTTrainer.__init__`: `padding_free = args.padding_free or (args.packing and packing_strategy in
    {"bfd", "bfd_split"})`: one flattened row per micro-batch (the plan's `packing`). 'wrapped' packs rows of
    max_length with the ordinary collator: the unpacked plan's bytes."""
    packing = as_bool(reader, "packing", reader.take("packing", False))
    strategy = str(reader.take("packing_strategy", "bfd"))
    if strategy not in ("bfd", "bfd_split", "wrapped"):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}packing_strategy: {strategy!r} is not one of bfd, "
                              "bfd_split, wrapped")
    padding_free = as_bool(reader, "padding_free", reader.take("padding_free", False))
    if padding_free or packing and strategy != "wrapped":
        reader.set("packing", True, "padding_free" if padding_free else "packing")


def _loss(reader: FieldReader) -> None:
    """`trl sft` trains with SFTTrainer (vramplan's trl-sft trainer: its fused LM head) and its `loss_type`."""
    reader.fixed("trainer", "trl-sft", "trl sft (SFTTrainer)")
    loss = str(reader.take("loss_type", "nll"))
    if loss not in _LOSSES:
        reader.refuse("loss_type", f"{loss} (SFT losses modelled: nll, dft; a preference loss needs DPO/KTO)")
    reader.set("loss_type", _LOSSES[loss], "loss_type")
