"""LLaMA-Factory YAML (`llamafactory-cli train config.yaml`), as its hparams (`src/llamafactory/hparams/`) and
model loader read it. Its TrainingArguments fields go through `hf.read_training_args`. Absent fields take
LLaMA-Factory's defaults:

- `stage` sft (pt is the same step); `finetuning_type` lora; `lora_rank` 8, `lora_alpha` 2 x rank,
  `lora_dropout` 0, `lora_target` all (-> all-linear) (`FinetuningArguments`); `cutoff_len` 2048 (`DataArguments`);
- dtype: `get_train_args` sets `compute_dtype` bf16 with `bf16`/`pure_bf16`, fp16 with `fp16`; the model is
  loaded in it. `init_adapter`: unless `pure_bf16` (or full tuning under ZeRO-3), trainable parameters are cast
  to fp32, so a full fine-tune holds fp32 weights under bf16/fp16 autocast (param fp32 + mixed precision);
- QLoRA: `quantization_bit: 4` -> `BitsAndBytesConfig(quant type, double_quantization (default on), compute dtype,
  bnb_4bit_quant_storage = compute dtype)` (`model_utils/quantization.configure_quantization`);
- checkpointing: on unless `disable_gradient_checkpointing`, reentrant per `use_reentrant_gc` (default on)
  (`model_utils/checkpointing.prepare_model_for_training`, which turns it off under FSDP2: `FSDP2_NOTE` when
  this file is read with an FSDP config); it does not call peft's
  `prepare_model_for_kbit_training`, so QLoRA's non-4-bit weights stay in the compute dtype (kbit_upcast off);
- `flash_attn`: auto (transformers' default, sdpa), disabled (eager), sdpa, fa2 (`model_utils/attention`);
- `packing`/`neat_packing`: bins of cutoff_len tokens, so the step holds batch x cutoff_len tokens.
"""

from __future__ import annotations

from pathlib import Path

from vramplan.configs import names
from vramplan.configs.fields import FieldReader, as_bool, as_float, as_int
from vramplan.configs.hf import read_training_args

REFUSED = {
    "use_unsloth": "unsloth kernels", "use_unsloth_gc": "unsloth's offloaded checkpointing",
    "upcast_layernorm": "fp32 layer norms", "upcast_lmhead_output": "fp32 logits", "shift_attn": "S2-Attn",
    "mixture_of_depths": "mixture of depths", "use_galore": "GaLore", "use_apollo": "APOLLO", "use_badam": "BAdam",
    "use_kt": "KTransformers offload", "train_from_scratch": "training from random weights",
}
FSDP2_NOTE = ("under an FSDP2 accelerate config LLaMA-Factory sets use_reentrant_gc false "
              "(prepare_model_for_training); this reading keeps the config's value")
_ATTENTION = {"auto": "sdpa", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}


def looks_like(data: dict) -> bool:
    return any(k in data
               for k in ("stage", "finetuning_type", "cutoff_len", "lora_target", "quantization_bit", "template"))


def read(reader: FieldReader, base: Path) -> None:
    reader.model = reader.take_model("model_name_or_path")
    reader.fixed("trainer", "hf", "LLaMA-Factory (CustomSeq2SeqTrainer, an HF Trainer)")
    for key, why in REFUSED.items():
        reader.refuse_if_on(key, why)
    # LLaMA-Factory model_utils/liger_kernel.py: `apply_liger_kernel_to_<type>` with Liger's defaults when training
    reader.set("liger", as_bool(reader, "enable_liger_kernel", reader.take("enable_liger_kernel", False)) or None,
               "enable_liger_kernel")
    stage = reader.take("stage", "sft")
    if stage not in ("sft", "pt"):
        reader.refuse("stage", f"{stage} (vramplan models sft and pt steps)")
    kind = reader.take("finetuning_type", "lora")
    if kind not in ("lora", "full"):
        reader.refuse("finetuning_type", f"{kind} (vramplan models lora and full)")
    bits = reader.take("quantization_bit")
    method = "full" if kind == "full" else "qlora" if bits == 4 else "lora"
    if bits not in (None, 4, 8):
        reader.refuse("quantization_bit", f"{bits}-bit weights (vramplan models 4-bit and 8-bit bitsandbytes)")
    if bits == 8 and kind == "lora":  # configure_quantization: BitsAndBytesConfig(load_in_8bit=True)
        reader.set("load_in_8bit", True, "quantization_bit")
        reader.fixed("kbit_upcast", False, "LLaMA-Factory (no prepare_model_for_kbit_training)")
    if bits is not None and str(reader.take("quantization_method", "bnb")) not in ("bnb", "bitsandbytes"):
        reader.refuse("quantization_method", "a quantizer other than bitsandbytes")
    reader.set("method", method, "finetuning_type" if bits is None else "quantization_bit")
    autocast = read_training_args(reader, base)
    pure = reader.take("pure_bf16", False)
    compute = "bf16" if pure or autocast == "bf16" else "fp16" if autocast == "fp16" else None
    if compute is None:
        reader.note("no bf16/fp16: LLaMA-Factory loads the checkpoint's dtype where the GPU takes it "
                    "(infer_optim_dtype); read as bf16")
        compute = "bf16"
    _dtypes(reader, method, compute, bool(pure), autocast)
    if method != "full":
        _lora(reader, method, compute)
    reader.set("seq", as_int(reader, "cutoff_len", reader.take("cutoff_len", 2048)), "cutoff_len")
    reader.take("packing"), reader.take("neat_packing")  # see the module docstring
    off = reader.take("disable_gradient_checkpointing", False)
    reader.set("grad_ckpt", not as_bool(reader, "disable_gradient_checkpointing", off),
               "disable_gradient_checkpointing")
    if not off:
        reentrant = reader.take("use_reentrant_gc", True)
        reader.set("ckpt_reentrant", as_bool(reader, "use_reentrant_gc", reentrant), "use_reentrant_gc")
    attn = str(reader.take("flash_attn", "auto")).lower()
    if attn not in _ATTENTION:
        raise reader.bad_value("flash_attn", attn, list(_ATTENTION))
    reader.set("attn", names.attention(reader, "flash_attn", _ATTENTION[attn]), "flash_attn")


def _dtypes(reader: FieldReader, method: str, compute: str, pure: bool, autocast: str | None) -> None:
    """Full tuning: init_adapter casts the trainable weights to fp32 unless pure_bf16 or ZeRO-3."""
    zero3 = reader.options.get("sharding") == "zero3"
    if method == "full" and not pure and not zero3 and autocast:
        reader.set("param_dtype", "fp32", "pure_bf16")
        reader.set("mixed_precision", autocast, "bf16" if autocast == "bf16" else "fp16")
    elif method == "full" and not pure and not zero3:
        reader.set("param_dtype", "fp32", "pure_bf16")
    else:
        reader.set("param_dtype", compute, "bf16" if autocast == "bf16" else "pure_bf16" if pure else "fp16")
    if pure and method != "full":
        reader.note("pure_bf16: LoRA adapters stay bf16; the estimate keeps peft's fp32 adapters (a little over)")


def _lora(reader: FieldReader, method: str, compute: str) -> None:
    rank = as_int(reader, "lora_rank", reader.take("lora_rank", 8))
    reader.set("rank", rank, "lora_rank")
    reader.set("alpha", as_float(reader, "lora_alpha", reader.take("lora_alpha", 2 * rank)), "lora_alpha")
    reader.set("lora_dropout", as_float(reader, "lora_dropout", reader.take("lora_dropout", 0.0)), "lora_dropout")
    if as_bool(reader, "use_dora", reader.take("use_dora", False)):  # DoRA is modelled (estimator/dora.py)
        reader.set("use_dora", True, "use_dora")
    target = str(reader.take("lora_target", "all"))
    reader.set("targets", "all-linear" if target == "all" else names.targets(reader, "lora_target", target),
               "lora_target")
    # LLaMA-Factory `additional_target` -> LoraConfig(modules_to_save=...) (model/adapter.py)
    saved = names.modules_to_save(reader, "additional_target", reader.take("additional_target"))
    reader.set("modules_to_save", saved, "additional_target")
    if method == "qlora":
        quant = str(reader.take("quantization_type", "nf4"))
        reader.set("quant", quant, "quantization_type")
        reader.set("double_quant", as_bool(reader, "double_quantization", reader.take("double_quantization", True)),
                   "double_quantization")
        reader.set("compute_dtype", compute, "bf16")
        reader.set("quant_storage", compute, "quantization_bit")
        # model_utils/checkpointing.prepare_model_for_training replaces peft's prepare_model_for_kbit_training:
        # non-4-bit weights keep the compute dtype (no fp32 upcast) unless upcast_layernorm (refused above).
        reader.fixed("kbit_upcast", False, "LLaMA-Factory (no prepare_model_for_kbit_training)")
