"""HF spellings in config fields (optimizer names, dtypes, attention, LoRA targets), read with the tables of
`vramplan.hf_names` (their one owner); an unknown or unmodelled value is an error naming the config field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vramplan import hf_names
from vramplan.configs.fields import ConfigReadError, FieldReader
from vramplan.errors import InputError


def _convert(reader: FieldReader, key: str, convert: Callable[[Any], str], value: Any) -> str:
    try:
        return convert(value)
    except InputError as exc:
        raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: {exc}") from None


def optimizer(reader: FieldReader, key: str, value: Any) -> str:
    return _convert(reader, key, hf_names.optimizer_from_hf, value)


def dtype(reader: FieldReader, key: str, value: Any) -> str:
    """A dtype spelling; 'auto' (the checkpoint's own dtype) is read as bf16, with a note."""
    if str(value).lower() == "auto":
        reader.note(f"{reader.prefix}{key}: auto means the checkpoint's dtype; read as bf16 (give --param-dtype)")
        return "bf16"
    return _convert(reader, key, hf_names.dtype_from_hf, value)


def storage(reader: FieldReader, key: str, value: Any) -> str:
    return _convert(reader, key, hf_names.storage_dtype_from_hf, value)


def attention(reader: FieldReader, key: str, value: Any) -> str:
    return _convert(reader, key, hf_names.attention_from_hf, value)


def targets(reader: FieldReader, key: str, value: Any) -> str:
    """peft `target_modules`: a list, a comma string or a shorthand (None is peft's per-architecture default)."""
    if value is None:
        return "default"
    if not isinstance(value, (str, list, tuple)) or any(not isinstance(v, str) for v in value):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: expected module names, got {value!r}")
    return _convert(reader, key, hf_names.targets_from_hf, value)


# peft `modules_to_save` names of an input embedding or an output head, by architecture (Llama, GPT-NeoX,
# GPT-2/BigCode, Falcon/BLOOM); the plan says which role (vramplan.plan.MODULES_TO_SAVE)
_SAVED_ROLE = {"embed_tokens": "embed_tokens", "embed_in": "embed_tokens", "wte": "embed_tokens",
               "word_embeddings": "embed_tokens", "lm_head": "lm_head", "embed_out": "lm_head"}


def modules_to_save(reader: FieldReader, key: str, value: Any) -> str | None:
    """peft `modules_to_save` (a list or a comma string): the input embedding and the output head are modelled;
    another module (a classifier `score`, a norm) is refused by name."""
    if value in (None, [], ""):
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or any(not isinstance(v, str) for v in items):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: expected module names, got {value!r}")
    names = [v.strip().rsplit(".", 1)[-1] for v in items if v.strip()]
    other = [n for n in names if n not in _SAVED_ROLE]
    if other:
        reader.refuse(key, f"trained copies of {', '.join(other)} (vramplan models the input embedding and the "
                      "output head: embed_tokens, lm_head)")
    return ",".join(sorted({_SAVED_ROLE[n] for n in names})) or None


__all__ = ["ConfigReadError", "attention", "dtype", "modules_to_save", "optimizer", "storage", "targets"]
