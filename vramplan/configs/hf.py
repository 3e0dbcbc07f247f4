"""HF `TrainingArguments` (a JSON of its fields, as `TrainingArguments.to_json_string` writes), peft's
`adapter_config.json` (`LoraConfig.save_pretrained`) and a `BitsAndBytesConfig` JSON (`to_json_string`, or a
model's `quantization_config`); `read_training_args` also serves the LLaMA-Factory and TRL readers.

TrainingArguments as transformers 5 uses it (`trainer.py`, `training_args.py`): `per_device_train_batch_size`
(default 8), `gradient_accumulation_steps` (1), `optim` (adamw_torch_fused on torch >= 2.8),
`activation_checkpointing` / its alias `gradient_checkpointing` (off) with kwargs: none given -> the model's
`_activation_checkpointing_enable` uses `use_reentrant: False`; `bf16`/`fp16` are autocast (they change memory
only where the weights are fp32); `deepspeed` (a path or a dict), `fsdp` + `fsdp_config`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from vramplan.configs import accelerate, deepspeed, names
from vramplan.configs.fields import (
    ConfigReadError,
    FieldReader,
    as_bool,
    as_float,
    as_int,
    follow,
    load_mapping,
)

REFUSED_TRAINING_ARGS = {
    "torch_compile": "torch.compile changes which activations are kept",
    "torch_compile_backend": "torch.compile", "torch_compile_mode": "torch.compile",
    "auto_find_batch_size": "a batch size found by retrying after out-of-memory",
}


def read_training_args(reader: FieldReader, base: Path, *, checkpointing: bool = False, batch: int = 8) -> str | None:
    """Map TrainingArguments fields; `checkpointing`/`batch` are the defaults of the config class in use (TRL's
    configs turn checkpointing on). Returns the autocast dtype ("bf16", "fp16" or None) for the caller, which
    knows what dtype the weights are loaded in."""
    for key, why in REFUSED_TRAINING_ARGS.items():
        reader.refuse_if_on(key, why)
    reader.set("batch",
               as_int(reader, "per_device_train_batch_size", reader.take("per_device_train_batch_size", batch)),
               "per_device_train_batch_size")
    reader.set("grad_accum", as_int(reader, "gradient_accumulation_steps",
                                    reader.take("gradient_accumulation_steps", 1)), "gradient_accumulation_steps")
    reader.set("optimizer", names.optimizer(reader, "optim", reader.take("optim", "adamw_torch_fused")), "optim")
    _checkpointing(reader, checkpointing)
    _evaluation(reader)
    _liger(reader)
    _parallel(reader, base)
    bf16, fp16 = reader.take("bf16"), reader.take("fp16")
    if bf16 is not None and as_bool(reader, "bf16", bf16):
        return "bf16"
    if fp16 is not None and as_bool(reader, "fp16", fp16):
        return "fp16"
    return None


def _liger(reader: FieldReader) -> None:
    """`use_liger_kernel`: transformers 5 `Trainer.__init__` -> `apply_liger_kernel(model, liger_kernel_config)`,
    Liger's defaults for the model type (the plan's `liger`); a config that switches single kernels is refused
    (TRL's `fused_linear_cross_entropy: false` is its own default, read as given)."""
    reader.set("liger", as_bool(reader, "use_liger_kernel", reader.take("use_liger_kernel", False)) or None,
               "use_liger_kernel")
    config = reader.take("liger_kernel_config")
    if isinstance(config, dict) and any(v is False and k != "fused_linear_cross_entropy" or v is True and k in (
            "cross_entropy", "fused_linear_cross_entropy") for k, v in config.items()):
        reader.refuse("liger_kernel_config", "a per-kernel Liger selection (vramplan models Liger's defaults)")


def _checkpointing(reader: FieldReader, default: bool) -> None:
    key = "activation_checkpointing" if reader.given("activation_checkpointing") else "gradient_checkpointing"
    reader.used.update(("activation_checkpointing", "gradient_checkpointing"))
    on = as_bool(reader, key, reader.take(key, default))
    reader.set("grad_ckpt", on, key)
    kw_key = next((k for k in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs") if reader.given(k)),
                  "gradient_checkpointing_kwargs")
    reader.used.update(("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"))
    kwargs = reader.take(kw_key) or {}
    if isinstance(kwargs, str):  # HfArgumentParser takes the dict as JSON text
        import json

        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError:
            kwargs = None
    if not isinstance(kwargs, dict):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}{kw_key}: expected a mapping, got {kwargs!r}")
    if not on:
        return
    if kwargs.get("offload"):
        reader.refuse(f"{kw_key}.offload", "checkpoints held in host memory")
    if kwargs.get("every_n_layers", 1) != 1:
        reader.refuse(f"{kw_key}.every_n_layers", "checkpointing only some layers")
    reader.set("ckpt_reentrant", bool(kwargs.get("use_reentrant", False)), kw_key)


def _evaluation(reader: FieldReader) -> None:
    """An evaluation step (`Trainer.evaluation_loop`: forward under no_grad, loss only unless the script passes
    compute_metrics) holds no saved activations, gradients or optimizer temporaries, so with a batch no larger
    than the training batch it stays under the training step's peak. A larger one is refused by name."""
    strategy = next((reader.data.get(k) for k in ("eval_strategy", "evaluation_strategy") if k in reader.data), "no")
    if str(strategy).lower() == "no" and not reader.data.get("do_eval"):
        return  # no evaluation: per_device_eval_batch_size is listed as ignored
    size = as_int(reader, "per_device_eval_batch_size", reader.take("per_device_eval_batch_size", 8))
    if size is not None and size > reader.options.get("batch", 8):
        reader.refuse("per_device_eval_batch_size", f"{size}, above the training batch {reader.options['batch']}, "
                      "with evaluation on (an evaluation step's batch)")


def _parallel(reader: FieldReader, base: Path) -> None:
    target = follow(reader, "deepspeed", base)
    if target is not None:
        nested = FieldReader(load_mapping(target) if isinstance(target, Path) else target,
                             str(target) if isinstance(target, Path) else reader.source, "" if isinstance(target, Path)
                             else "deepspeed.")
        deepspeed.read(nested)
        for field in ("batch", "grad_accum"):  # "auto" is filled from these TrainingArguments
            nested.options.pop(field, None)
        reader.absorb(nested, "deepspeed" if isinstance(target, Path) else "")
        if isinstance(target, Path):
            reader.followed.append(str(target))
    words = accelerate.fsdp_words(reader, "fsdp", reader.take("fsdp"))
    config = follow(reader, "fsdp_config", base)
    section = FieldReader(load_mapping(config) if isinstance(config, Path) else config or {}, reader.source,
                          "fsdp_config.")
    if words is not None:
        accelerate.read_fsdp_config(section, "fsdp", words)
    reader.absorb(section)


# TrainingArguments JSON alone ---------------------------------------------------------------------------------


def _looks_like_training_args(data: dict) -> bool:
    return "per_device_train_batch_size" in data or "output_dir" in data and "learning_rate" in data


def _read_training_args_file(reader: FieldReader, base: Path) -> None:
    reader.fixed("trainer", "hf", "TrainingArguments (transformers Trainer)")
    autocast = read_training_args(reader, base)
    reader.note("TrainingArguments hold no model, sequence length or method: give --model, --seq and --method "
                "(or read adapter_config.json and a BitsAndBytesConfig with it)")
    if autocast:
        reader.note(f"{'bf16' if autocast == 'bf16' else 'fp16'}: autocast; the weights keep the dtype they are loaded "
                    "in (from_pretrained dtype; give --param-dtype fp32 --mixed-precision for fp32 weights)")


TRAINING_ARGS = SimpleNamespace(looks_like=_looks_like_training_args, read=_read_training_args_file)


# peft adapter_config.json -------------------------------------------------------------------------------------

PEFT_REFUSED = {"layers_to_transform": "adapters on some layers only", "rank_pattern": "per-module ranks",
                "trainable_token_indices": "trainable token rows", "target_parameters": "LoRA on parameters"}


def _read_peft(reader: FieldReader, base: Path) -> None:
    kind = reader.take("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        reader.refuse("peft_type", f"{kind} (vramplan models LoRA)")
    reader.model = reader.take_model("base_model_name_or_path")
    for key, why in PEFT_REFUSED.items():
        reader.refuse_if_on(key, why)
    reader.set("method", "lora", "peft_type")
    reader.set("rank", as_int(reader, "r", reader.take("r", 8)), "r")
    reader.set("alpha", as_float(reader, "lora_alpha", reader.take("lora_alpha", 8)), "lora_alpha")
    reader.set("lora_dropout", as_float(reader, "lora_dropout", reader.take("lora_dropout", 0.0)), "lora_dropout")
    if as_bool(reader, "use_dora", reader.take("use_dora", False)):  # DoRA is modelled (estimator/dora.py)
        reader.set("use_dora", True, "use_dora")
    reader.set("targets", names.targets(reader, "target_modules", reader.take("target_modules")), "target_modules")
    saved = names.modules_to_save(reader, "modules_to_save", reader.take("modules_to_save"))
    reader.set("modules_to_save", saved, "modules_to_save")


PEFT = SimpleNamespace(looks_like=lambda data: "peft_type" in data, read=_read_peft)


# BitsAndBytesConfig JSON --------------------------------------------------------------------------------------


def _looks_like_bnb(data: dict) -> bool:
    return data.get("quant_method") == "bitsandbytes" or ("load_in_4bit" in data and "bnb_4bit_quant_type" in data)


def read_bnb(reader: FieldReader, base: Path | None = None) -> None:
    """BitsAndBytesConfig's fields (transformers `BitsAndBytesConfig.__init__` defaults: fp4, no double quant,
    compute dtype fp32, storage uint8). `load_in_8bit`: LLM.int8 under LoRA (threshold and fp16-weight knobs at
    their defaults, 6.0 and off)."""
    reader.take("quant_method")
    if as_bool(reader, "load_in_8bit", reader.take("load_in_8bit", False)):
        _read_bnb_8bit(reader)
        return
    if not reader.take("load_in_4bit"):
        raise ConfigReadError(f"{reader.source}: load_in_4bit is not true: nothing is quantized")
    reader.set("method", "qlora", "load_in_4bit")
    reader.note("4-bit weights: peft's prepare_model_for_kbit_training assumed (fp32 upcast of the other weights), "
                "as QLoRA scripts call it; --no-kbit-upcast if yours does not")
    quant = str(reader.take("bnb_4bit_quant_type", "fp4"))
    if quant not in ("nf4", "fp4"):
        raise reader.bad_value("bnb_4bit_quant_type", quant, ["nf4", "fp4"])
    reader.set("quant", quant, "bnb_4bit_quant_type")
    reader.set("double_quant", as_bool(reader, "bnb_4bit_use_double_quant",
                                       reader.take("bnb_4bit_use_double_quant", False)), "bnb_4bit_use_double_quant")
    reader.set("compute_dtype", names.dtype(reader, "bnb_4bit_compute_dtype",
                                            reader.take("bnb_4bit_compute_dtype", "float32")), "bnb_4bit_compute_dtype")
    storage = str(reader.take("bnb_4bit_quant_storage", "uint8"))
    reader.set("quant_storage", names.storage(reader, "bnb_4bit_quant_storage", storage), "bnb_4bit_quant_storage")
    skip = reader.take("llm_int8_skip_modules")
    if skip:
        reader.refuse("llm_int8_skip_modules", "modules kept unquantized")


def _read_bnb_8bit(reader: FieldReader) -> None:
    reader.set("method", "lora", "load_in_8bit")
    reader.set("load_in_8bit", True, "load_in_8bit")
    reader.note("8-bit weights: peft's prepare_model_for_kbit_training assumed (fp32 upcast of the other weights); "
                "--no-kbit-upcast if your script does not call it")
    if reader.take("load_in_4bit"):
        reader.refuse("load_in_4bit", "4-bit and 8-bit together (BitsAndBytesConfig refuses both)")
    threshold = reader.take("llm_int8_threshold", 6.0)
    if as_float(reader, "llm_int8_threshold", threshold) != 6.0:
        reader.note("llm_int8_threshold: the outlier columns it selects depend on the data; not modelled")
    if reader.take("llm_int8_has_fp16_weight"):
        reader.refuse("llm_int8_has_fp16_weight", "16-bit weights beside their int8 copy")
    for key in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
                "bnb_4bit_quant_storage", "llm_int8_enable_fp32_cpu_offload"):
        reader.take(key)  # 4-bit knobs a saved 8-bit config still carries: no effect
    if reader.take("llm_int8_skip_modules"):
        reader.refuse("llm_int8_skip_modules", "modules kept unquantized")


BNB = SimpleNamespace(looks_like=_looks_like_bnb, read=read_bnb)
