"""Hugging Face's spellings of the plan's names: the one owner of the tables the CLI flags and the config readers
(`vramplan.configs`) share. Torch-free and light (no records): the CLI's parser calls these as argparse types.

- Optimizers: transformers `training_args.OptimizerNames` (5.24). Each value maps to the plan optimizer that
  builds the same states, as `trainer_optimizer._OPTIMIZER_HANDLERS` does (adamw_torch = `torch.optim.AdamW`,
  adamw_torch_fused = `AdamW(fused=True)`, adamw_bnb_8bit/adamw_8bit = `bnb.optim.AdamW(optim_bits=8)`,
  paged_adamw_8bit/32bit = bitsandbytes' paged AdamW, lion_8bit = `bnb.optim.Lion(optim_bits=8)`, adafactor =
  transformers' `Adafactor(scale_parameter=False, relative_step=False)`, sgd = `torch.optim.SGD` without momentum),
  or is refused by name: its states differ from every modelled optimizer (`HF_NOT_MODELLED`).
- Dtypes: `bfloat16`/`float16`/`float32` (and `torch.` prefixed) as in `dtype=` / `bnb_4bit_compute_dtype`.
- Attention: `attn_implementation` values; other kernels are refused by name.
- LoRA targets: peft's `all-linear` shorthand (also written `all_linear`), or a list of module names.
"""

from __future__ import annotations

from collections.abc import Sequence

from vramplan.errors import InputError, did_you_mean
from vramplan.vocab import DTYPES, OPTIMIZERS, QUANT_STORAGES

HF_OPTIMIZERS: dict[str, str] = {
    **{name: name for name in OPTIMIZERS},  # vramplan's own names
    "adamw_torch": "adamw",
    "adamw_hf": "adamw",  # transformers < 5: its own AdamW, the same two fp32 states
    "adamw_torch_fused": "adamw_fused",
    "adamw_bnb_8bit": "adamw_8bit",
    "adamw_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "lion_8bit": "lion_8bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}

# OptimizerNames values whose states vramplan does not model, and what they keep instead.
HF_NOT_MODELLED: dict[str, str] = {
    "adamw_torch_xla": "AdamW on XLA devices (vramplan models CUDA)",
    "adamw_torch_npu_fused": "fused AdamW on Ascend NPUs (vramplan models CUDA)",
    "adamw_anyprecision": "torchdistx AnyPrecisionAdamW (states in a chosen dtype, Kahan buffer)",
    "adamw_torch_4bit": "torchao 4-bit AdamW states",
    "adamw_torch_8bit": "torchao 8-bit AdamW states (torchao's blockwise layout, not bitsandbytes')",
    "ademamix": "bitsandbytes AdEMAMix (three states)",
    "ademamix_8bit": "bitsandbytes AdEMAMix 8-bit (three states)",
    "paged_ademamix_32bit": "bitsandbytes paged AdEMAMix (three states)",
    "paged_ademamix_8bit": "bitsandbytes paged AdEMAMix 8-bit (three states)",
    "lion_32bit": "bitsandbytes Lion with a 32-bit state",
    "paged_lion_32bit": "bitsandbytes paged Lion with a 32-bit state",
    "paged_lion_8bit": "bitsandbytes paged Lion 8-bit (lion_8bit is modelled unpaged only)",
    "adagrad": "torch Adagrad (one fp32 state)",
    "rmsprop": "torch RMSprop (one fp32 state)",
    "rmsprop_bnb": "bitsandbytes RMSprop",
    "rmsprop_bnb_8bit": "bitsandbytes RMSprop 8-bit",
    "rmsprop_bnb_32bit": "bitsandbytes RMSprop 32-bit",
    "galore_adamw": "GaLore low-rank projected states",
    "galore_adamw_8bit": "GaLore low-rank projected states",
    "galore_adafactor": "GaLore low-rank projected states",
    "galore_adamw_layerwise": "GaLore with per-layer optimizer steps in backward hooks",
    "galore_adamw_8bit_layerwise": "GaLore with per-layer optimizer steps in backward hooks",
    "galore_adafactor_layerwise": "GaLore with per-layer optimizer steps in backward hooks",
    "lomo": "LOMO (fused backward and update, no stored gradients)",
    "adalomo": "AdaLomo (fused backward and update, no stored gradients)",
    "grokadamw": "GrokAdamW (extra gradient EMA state)",
    "schedule_free_radam": "schedule-free RAdam (extra iterate states)",
    "schedule_free_adamw": "schedule-free AdamW (extra iterate states)",
    "schedule_free_sgd": "schedule-free SGD (extra iterate states)",
    "apollo_adamw": "APOLLO low-rank projected states",
    "apollo_adamw_layerwise": "APOLLO with per-layer optimizer steps",
    "stable_adamw": "StableAdamW (optimi)",
}

HF_DTYPES: dict[str, str] = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
    "uint8": "uint8", "torch.uint8": "uint8",  # bnb_4bit_quant_storage only
}

HF_ATTENTION: dict[str, str] = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash_attention_2"}
HF_ATTENTION_NOT_MODELLED = ("flash_attention_3", "flex_attention", "paged_attention", "sdpa_paged", "eager_paged")

HF_TARGETS: dict[str, str] = {"all-linear": "all-linear", "all_linear": "all-linear"}

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


def optimizer_from_hf(name: str) -> str:
    """The plan optimizer for a transformers `optim` name (or a vramplan name); refuses unmodelled ones by name."""
    key = str(name).strip().lower()
    if key in HF_OPTIMIZERS:
        return HF_OPTIMIZERS[key]
    if key in HF_NOT_MODELLED:
        raise InputError(f"optimizer '{name}' is not modelled: {HF_NOT_MODELLED[key]}; modelled: "
                         f"{', '.join(OPTIMIZERS)}")
    raise InputError(f"unknown optimizer '{name}'{did_you_mean(key, HF_OPTIMIZERS)}; modelled: "
                     f"{', '.join(OPTIMIZERS)}")


def dtype_from_hf(name: str, allowed: Sequence[str] = DTYPES) -> str:
    """'bf16' | 'fp16' | 'fp32' (or one of `allowed`) for any spelling: bfloat16, torch.float16, fp32, ..."""
    key = str(name).strip().lower()
    dtype = HF_DTYPES.get(key)
    if dtype is None or dtype not in allowed:
        spellings = [k for k, v in HF_DTYPES.items() if v in allowed]
        raise InputError(f"dtype '{name}' is not one of {', '.join(allowed)}{did_you_mean(key, spellings)}")
    return dtype


def storage_dtype_from_hf(name: str) -> str:
    """bnb_4bit_quant_storage: uint8 or a float dtype."""
    return dtype_from_hf(name, QUANT_STORAGES)


def attention_from_hf(name: str) -> str:
    """transformers `attn_implementation`: the three modelled kernels; others are refused by name."""
    key = str(name).strip().lower()
    if key in HF_ATTENTION:
        return HF_ATTENTION[key]
    choices = ", ".join(HF_ATTENTION)
    if key in HF_ATTENTION_NOT_MODELLED or key.startswith(("kernels-", "paged")):
        raise InputError(f"attention '{name}' is not modelled (modelled: {choices})")
    raise InputError(f"unknown attention '{name}'{did_you_mean(key, HF_ATTENTION)}; modelled: {choices}")


def targets_from_hf(value: str | Sequence[str]) -> str:
    """peft `target_modules` as the plan's `targets`: a shorthand or a comma list (a list is joined)."""
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    if not names:
        raise InputError("give LoRA targets: default, attention, all-linear or module names (q_proj,v_proj)")
    names = [HF_TARGETS.get(n.lower(), n) for n in names]
    if "all-linear" in names and len(names) > 1:
        raise InputError("all-linear already targets every linear layer: give it alone")
    return ",".join(names)


def bool_from_hf(text: str | bool) -> bool:
    """A boolean as HfArgumentParser takes one: true/false, yes/no, 1/0."""
    if isinstance(text, bool):
        return text
    key = str(text).strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise InputError(f"'{text}' is not a boolean (true or false)")
