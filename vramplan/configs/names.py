"""HF spellings the config readers need: optimizer names (transformers `OptimizerNames`), dtypes, attention
implementations. Uses `vramplan.hf_names` (the one owner of these tables) when it is present."""

from __future__ import annotations

from typing import Any

from vramplan.configs.fields import FieldReader

# transformers.training_args.OptimizerNames value -> plan optimizer. Trainer.get_optimizer_cls_and_kwargs:
# adamw_torch = torch.optim.AdamW, adamw_torch_fused = AdamW(fused=True), adamw_bnb_8bit/adamw_8bit =
# bnb.optim.AdamW(optim_bits=8), paged_* = bnb paged AdamW, lion_8bit = bnb Lion 8-bit, sgd = torch SGD.
_OPTIMIZERS = {
    "adamw_torch": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
    "adamw_torch_fused": "adamw_fused",
    "adamw_bnb_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit",
    "adafactor": "adafactor", "sgd": "sgd", "lion_8bit": "lion_8bit",
}
_DTYPES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
}
_ATTENTION = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash_attention_2", "fa2": "flash_attention_2"}


def _table(name: str, fallback: dict[str, str]) -> dict[str, str]:
    try:
        from vramplan import hf_names  # type: ignore[attr-defined]
    except ImportError:
        return fallback
    table = getattr(hf_names, name, None)
    return {**fallback, **table} if isinstance(table, dict) else fallback


def optimizer(reader: FieldReader, key: str, value: Any) -> str:
    table = _table("HF_OPTIMIZERS", _OPTIMIZERS)
    name = str(value).lower()
    if name not in table:
        raise reader.bad_value(key, value, sorted(table))
    return table[name]


def dtype(reader: FieldReader, key: str, value: Any) -> str | None:
    """A dtype spelling; 'auto' (the checkpoint's own dtype) gives None, with a note."""
    table = _table("HF_DTYPES", _DTYPES)
    name = str(value).lower()
    if name == "auto":
        reader.note(f"{reader.prefix}{key}: auto means the checkpoint's dtype; read as bf16 (give --param-dtype)")
        return "bf16"
    if name not in table:
        raise reader.bad_value(key, value, sorted(table))
    return table[name]


def attention(reader: FieldReader, key: str, value: Any) -> str:
    table = _table("HF_ATTENTION", _ATTENTION)
    name = str(value).lower()
    if name not in table:
        raise reader.bad_value(key, value, sorted(table))
    return table[name]
