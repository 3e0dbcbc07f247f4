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


__all__ = ["ConfigReadError", "attention", "dtype", "optimizer", "storage", "targets"]
