"""axolotl YAML (`axolotl train config.yml`), as axolotl's schema (`src/axolotl/utils/schemas/`) and loaders
read it. Where a field is absent, axolotl's own default is used, not vramplan's:

- `sequence_len` 512, `micro_batch_size` 1, `gradient_accumulation_steps` 1 (`schemas/config.py`,
  `schemas/training.py`); `optimizer` adamw_torch_fused (`HyperparametersConfig.optimizer`);
- dtype: `utils/config.resolve_dtype`: bf16 (or `bf16: auto` on a bf16 GPU) -> bfloat16, else load_in_8bit/fp16
  -> float16, else float32; the model is loaded in it, so it is the param dtype (autocast then changes nothing);
- `gradient_checkpointing` off unless set; when on without kwargs, `normalize_config` sets `use_reentrant: True`;
- attention: `attn_implementation` (or the deprecated flash_attention / sdp_attention / eager_attention) else
  transformers' default, sdpa;
- QLoRA (`adapter: qlora` + `load_in_4bit`): `ModelLoader._set_quantization_config` builds nf4, double quant,
  compute dtype = the torch dtype, `bnb_4bit_quant_storage` bfloat16 (+ `bnb_config_kwargs`);
  `_prepare_model_for_quantization` skips peft's kbit upcast under FSDP and ZeRO-3 (the plan's default);
- `lora_target_linear: true` adds every linear layer (`find_all_linear_names`) -> all-linear;
- `sample_packing`: micro_batch_size bins of sequence_len tokens (multipack), so the step holds batch x seq
  tokens, as with `pad_to_sequence_len`; without either, batches are at most sequence_len long (the estimate is
  the longest batch).
"""

from __future__ import annotations

from pathlib import Path

from vramplan.configs import accelerate, deepspeed, names
from vramplan.configs.fields import FieldReader, as_bool, as_float, as_int, follow

# Memory-relevant fields the estimator does not model yet: an error naming them when they are on.
REFUSED = {
    "rl": "preference/RL trainers (reference model, chosen+rejected batches)",
    "torch_compile": "torch.compile changes which activations are kept",
    "activation_offloading": "activations offloaded to host memory",
    "unfrozen_parameters": "a partly frozen full fine-tune",
    "context_parallel_size": "context parallelism", "tensor_parallel_size": "tensor parallelism",
    "dp_shard_size": "N-D parallelism", "fp8": "fp8 training", "qat": "quantization-aware training",
    "tiled_mlp": "tiled MLP", "chunked_cross_entropy": "chunked cross-entropy",
    "cut_cross_entropy": "cut cross-entropy", "gptq": "GPTQ weights", "relora": "ReLoRA", "lora_on_cpu": "LoRA on CPU",
    "unsloth_lora_mlp": "unsloth kernels", "unsloth_lora_qkv": "unsloth kernels", "unsloth_lora_o": "unsloth kernels",
    "liger_layer_norm": "Liger's LayerNorm", "liger_cross_entropy": "Liger's cross-entropy over full logits",
}
_OLD_ATTENTION = (("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"), ("eager_attention", "eager"),
                  ("flex_attention", "flex_attention"), ("xformers_attention", "xformers"), ("s2_attention", "s2"),
                  ("sage_attention", "sage"))


_LIGER = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_fused_linear_cross_entropy")


def _liger(reader: FieldReader) -> None:
    """axolotl's LigerPlugin (integrations/liger) passes each `liger_*` flag to `apply_liger_kernel_to_<type>`;
    the plan's `liger` is Liger's defaults, which these four together are (`liger_swiglu` is the older name of
    `liger_glu_activation`). Some on and some off is a per-kernel selection: refused."""
    swiglu = reader.take("liger_swiglu")
    on = {k: as_bool(reader, k, reader.take(k, False)) for k in _LIGER}
    if swiglu is not None and not reader.given("liger_glu_activation"):
        on["liger_glu_activation"] = as_bool(reader, "liger_swiglu", swiglu)
    if any(on.values()) and not all(on.values()):
        off = ", ".join(k for k, v in on.items() if not v)
        reader.refuse(off.split(", ")[0], f"a per-kernel Liger selection ({off} off; vramplan models Liger's "
                      "defaults: rope, rms_norm, glu and fused linear cross-entropy together)")
    if all(on.values()):
        reader.set("liger", True, "liger_fused_linear_cross_entropy")


def looks_like(data: dict) -> bool:
    return "base_model" in data or ("sequence_len" in data and "micro_batch_size" in data)


def read(reader: FieldReader, base: Path) -> None:
    reader.model = reader.take_model("base_model")
    reader.fixed("trainer", "hf", "axolotl (AxolotlTrainer, an HF Trainer)")
    for key, why in REFUSED.items():
        reader.refuse_if_on(key, why)
    dtype = _dtype(reader)
    method = _method(reader)
    reader.set("method", method, "adapter")
    reader.set("param_dtype", dtype, "bf16" if reader.given("bf16") else "fp16")
    if method != "full":
        _lora(reader)
    if method == "qlora":
        _qlora(reader, dtype)
    reader.set("seq", as_int(reader, "sequence_len", reader.take("sequence_len", 512)), "sequence_len")
    reader.set("batch", as_int(reader, "micro_batch_size", reader.take("micro_batch_size", 1)), "micro_batch_size")
    reader.set("grad_accum",
               as_int(reader, "gradient_accumulation_steps", reader.take("gradient_accumulation_steps", 1)),
               "gradient_accumulation_steps")
    reader.take("sample_packing"), reader.take("pad_to_sequence_len")  # see the module docstring
    _evaluation(reader)
    _checkpointing(reader)
    _liger(reader)
    reader.set("attn", _attention(reader), "attn_implementation")
    reader.set("optimizer", names.optimizer(reader, "optimizer", reader.take("optimizer", "adamw_torch_fused")),
               "optimizer")
    _parallel(reader, base)


def _dtype(reader: FieldReader) -> str:
    bf16, fp16 = reader.take("bf16"), reader.take("fp16")
    bfloat16, float16 = reader.take("bfloat16"), reader.take("float16")
    if bf16 == "auto":
        reader.note("bf16: auto read as bf16 (axolotl resolve_dtype: on a GPU with bf16)")
        return "bf16"
    if (bf16 and as_bool(reader, "bf16", bf16)) or bfloat16:
        return "bf16"
    if reader.take("load_in_8bit") or (fp16 and as_bool(reader, "fp16", fp16)) or float16:
        return "fp16"
    return "fp32"


def _method(reader: FieldReader) -> str:
    adapter = reader.take("adapter")
    four_bit, eight_bit = reader.take("load_in_4bit", False), reader.data.get("load_in_8bit", False)
    if eight_bit and (adapter != "lora" or four_bit):
        reader.refuse("load_in_8bit", "8-bit weights without adapter lora" if not four_bit else "8-bit and 4-bit "
                      "together")
    if adapter in (None, "", "none"):
        if four_bit:
            reader.refuse("load_in_4bit", "4-bit weights without an adapter")
        return "full"
    if adapter not in ("lora", "qlora"):
        raise reader.bad_value("adapter", adapter, ["lora", "qlora"])
    if adapter == "qlora" and not four_bit:
        reader.refuse("adapter", "qlora without load_in_4bit (axolotl quantizes only with load_in_4bit: true)")
    if adapter == "lora" and four_bit:  # ModelLoader builds the 4-bit config for adapter qlora only, but
        reader.refuse("load_in_4bit", "with adapter lora: unquantized weights that prepare_model_for_kbit_training "
                      "still upcasts (axolotl quantizes with adapter: qlora)")
    return "qlora" if four_bit else "lora"


def _lora(reader: FieldReader) -> None:
    reader.set("rank", as_int(reader, "lora_r", reader.take("lora_r")), "lora_r")
    alpha = reader.take("lora_alpha")
    reader.set("alpha", as_float(reader, "lora_alpha", alpha), "lora_alpha")
    reader.set("lora_dropout", as_float(reader, "lora_dropout", reader.take("lora_dropout", 0.0)), "lora_dropout")
    if as_bool(reader, "peft_use_dora", reader.take("peft_use_dora", False)):  # DoRA is modelled (estimator/dora.py)
        reader.set("use_dora", True, "peft_use_dora")
    if reader.data.get("load_in_8bit"):  # ModelLoader: BitsAndBytesConfig(load_in_8bit=True) for adapter lora
        reader.set("load_in_8bit", True, "load_in_8bit")
    linear, modules = reader.take("lora_target_linear"), reader.take("lora_target_modules")
    if linear and as_bool(reader, "lora_target_linear", linear):
        reader.set("targets", "all-linear", "lora_target_linear")
    elif modules:
        reader.set("targets", names.targets(reader, "lora_target_modules", modules), "lora_target_modules")
    saved = names.modules_to_save(reader, "lora_modules_to_save", reader.take("lora_modules_to_save"))
    reader.set("modules_to_save", saved, "lora_modules_to_save")


def _qlora(reader: FieldReader, dtype: str) -> None:
    kwargs = reader.section("bnb_config_kwargs") or FieldReader({}, reader.source, "bnb_config_kwargs.")
    quant = str(kwargs.take("bnb_4bit_quant_type", "nf4"))
    if quant not in ("nf4", "fp4"):
        raise kwargs.bad_value("bnb_4bit_quant_type", quant, ["nf4", "fp4"])
    reader.set("quant", quant, "bnb_config_kwargs.bnb_4bit_quant_type")
    double = kwargs.take("bnb_4bit_use_double_quant", True)
    reader.set("double_quant", as_bool(kwargs, "bnb_4bit_use_double_quant", double), "bnb_config_kwargs")
    storage = kwargs.take("bnb_4bit_quant_storage", "bfloat16")
    reader.set("quant_storage", names.storage(kwargs, "bnb_4bit_quant_storage", storage), "adapter")
    compute = kwargs.take("bnb_4bit_compute_dtype")
    reader.set("compute_dtype", names.dtype(kwargs, "bnb_4bit_compute_dtype", compute) if compute else dtype,
               "bf16" if reader.given("bf16") else "adapter")
    reader.absorb(kwargs)


def _evaluation(reader: FieldReader) -> None:
    """axolotl evaluates with `eval_batch_size` (default micro_batch_size) when `val_set_size` or `test_datasets`
    give an eval set: a forward without saved activations or gradients, under the training step's peak while its
    batch is no larger (see `vramplan.configs.hf._evaluation`). A larger one is refused by name."""
    if not (reader.data.get("val_set_size") or reader.data.get("test_datasets")):
        return
    size = as_int(reader, "eval_batch_size", reader.take("eval_batch_size"))
    if size is not None and size > reader.options["batch"]:
        reader.refuse("eval_batch_size", f"{size}, above micro_batch_size {reader.options['batch']} "
                      "(an evaluation step's batch)")


def _checkpointing(reader: FieldReader) -> None:
    on = reader.take("gradient_checkpointing", False)
    if isinstance(on, str) and on.startswith("offload"):
        reader.refuse("gradient_checkpointing", f"{on} (checkpoints offloaded to host memory)")
    on = as_bool(reader, "gradient_checkpointing", on)
    reader.set("grad_ckpt", on, "gradient_checkpointing")
    kwargs = reader.take("gradient_checkpointing_kwargs") or {}
    if on:
        reentrant = kwargs.get("use_reentrant", True)  # normalize_config's default when no kwargs are given
        reader.set("ckpt_reentrant", bool(reentrant), "gradient_checkpointing_kwargs")


def _attention(reader: FieldReader) -> str:
    given = reader.take("attn_implementation")
    for key, impl in _OLD_ATTENTION:
        value = reader.take(key)
        if value and given is None:
            given = impl
    return names.attention(reader, "attn_implementation", given or "sdpa")


def _parallel(reader: FieldReader, base: Path) -> None:
    target = follow(reader, "deepspeed", base)
    if target is not None:
        followed = (deepspeed.read_file(target) if isinstance(target, Path)
                    else _inline_deepspeed(reader, target))
        for field in ("batch", "grad_accum"):  # HF fills "auto"; the axolotl fields win over numbers there
            followed.options.pop(field, None)
        reader.absorb(followed, "deepspeed" if isinstance(target, Path) else "")
        reader.followed.append(str(target) if isinstance(target, Path) else "deepspeed (inline)")
    words = accelerate.fsdp_words(reader, "fsdp", reader.take("fsdp"))
    version = reader.take("fsdp_version")
    section = reader.section("fsdp_config")
    if words is not None or version is not None:
        section = section or FieldReader({}, reader.source, "fsdp_config.")
        if version is not None:
            section.data.setdefault("fsdp_version", version)
        accelerate.read_fsdp_config(section, "fsdp", words or ())
        reader.absorb(section)
    elif section is not None:
        reader.absorb(section)  # fsdp_config without fsdp/fsdp_version: FSDP is off, its fields are ignored


def _inline_deepspeed(reader: FieldReader, data: dict) -> FieldReader:
    inline = FieldReader(data, reader.source, "deepspeed.")
    deepspeed.read(inline)
    return inline
