"""Inventory of an architecture with no hand-written spec: build the transformers class on the meta device.

No memory, no weights: `torch.device("meta")` gives every parameter its shape and nothing else (the trick
accelerate's `estimate-memory` command uses). Roles follow what transformers' bitsandbytes integration does:
only modules whose type *is* `nn.Linear` get quantized, and never the output embedding.

Importing torch and transformers and building the model takes seconds (17-29 s measured on a loaded 2-core
machine), so the result is kept on disk: one JSON record per config and transformers version under
`$VRAMPLAN_CACHE_DIR` (else `$XDG_CACHE_HOME/vramplan`, else `~/.cache/vramplan`), `specs/<key>.json`. The record
is generic: the parameter tensors, and a `traits` slot with the layer traits `vramplan.measure.meta_traits`
derives from the same build (`traits_record`). A second call reads the record and imports no torch. On a
terminal, a transient status line on stderr says what the first call is doing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from vramplan.errors import UnsupportedArchitectureError
from vramplan.inventory import Inventory, ParamTensor

RECORD_VERSION = 2  # bump when the record's layout or the derivation changes


def cache_dir() -> Path:
    """Where derived records live: $VRAMPLAN_CACHE_DIR, else $XDG_CACHE_HOME/vramplan, else ~/.cache/vramplan."""
    if os.environ.get("VRAMPLAN_CACHE_DIR"):
        return Path(os.environ["VRAMPLAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vramplan"


def _transformers_version() -> str:
    """From the installed distribution's metadata: no transformers import."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "none"


def _config_json(cfg: Mapping[str, Any]) -> str:
    return json.dumps(dict(cfg), sort_keys=True, default=str)


def record_path(cfg: Mapping[str, Any]) -> Path:
    """The record's file: a hash of the config, the transformers version and the record version."""
    key = f"{RECORD_VERSION}\n{_transformers_version()}\n{_config_json(cfg)}"
    return cache_dir() / "specs" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def inventory_from_meta(cfg: Mapping[str, Any]) -> Inventory:
    """The parameter inventory of `cfg`'s transformers class (from the disk record when there is one)."""
    record = meta_record(cfg)
    return Inventory([ParamTensor(name, tuple(shape), role, module, layer)
                      for name, shape, role, module, layer in record["tensors"]])


def traits_record(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `traits` slot of `cfg`'s record (the fields of `vramplan.traits.Traits`), derived with the inventory
    from one meta build. An architecture whose layer meta_traits cannot read raises its error again."""
    record = meta_record(cfg)
    if record.get("traits") is None and not record.get("traits_error"):  # a record written before traits existed
        record = _build_and_store(cfg)
    if record.get("traits_error"):
        raise UnsupportedArchitectureError(record["traits_error"])
    return dict(record["traits"])


@lru_cache(maxsize=64)
def _load(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or damaged: rebuild
    return record if isinstance(record, dict) and record.get("version") == RECORD_VERSION else None


def meta_record(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The cached record of `cfg`, built (torch, transformers) and stored when there is none."""
    return _load(record_path(cfg)) or _build_and_store(cfg)


def _build_and_store(cfg: Mapping[str, Any]) -> dict[str, Any]:
    with _status(f"reading model_type '{cfg.get('model_type')}' through transformers on the meta device "
                 f"(first time for this config; cached in {cache_dir()})"):
        record = build_record(cfg)
    path = record_path(cfg)
    with contextlib.suppress(OSError):  # a read-only cache is only slower
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)
    _load.cache_clear()
    return record


def build_record(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Build the model on the meta device once; its tensors and (when meta_traits can read it) its traits."""
    from dataclasses import asdict

    model = _meta_model(cfg)
    record: dict[str, Any] = {"version": RECORD_VERSION, "transformers": _transformers_version(),
                              "model_type": cfg.get("model_type"), "tensors": _tensors(model), "traits": None}
    try:
        from vramplan.measure.meta_traits import derive_traits
    except ImportError:
        return record
    try:
        record["traits"] = asdict(derive_traits(model, cfg))
    except UnsupportedArchitectureError as exc:
        record["traits_error"] = str(exc)
    return record


def _meta_model(cfg: Mapping[str, Any]):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001  (unknown model_type, or no causal-LM class for it)
        raise UnsupportedArchitectureError(
            f"transformers cannot build a causal LM for model_type '{cfg.get('model_type')}': {exc}"
        ) from None


def _layer_index(name: str, prefix: str = "layers.") -> int | None:
    """The decoder layer a parameter belongs to: the number after the layer list's path (`model.layers.`,
    GPT-BigCode's `transformer.h.`: `meta_traits.decoder_layers`), else after any `.layers.`."""
    if prefix.endswith(".") and name.startswith(prefix) and prefix != "layers.":
        head = name[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() else None
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _layers_prefix(model) -> str:
    try:
        from vramplan.measure.meta_traits import decoder_layers

        return decoder_layers(model)[0] + "."
    except (ImportError, UnsupportedArchitectureError):
        return "layers."


def _tensors(model) -> list[list[Any]]:
    """[name, shape, role, module, layer] per parameter, roles as transformers' bitsandbytes integration sees
    them (`replace_with_bnb_linear` swaps modules whose type is nn.Linear, never the output embedding)."""
    import torch

    output = model.get_output_embeddings()
    modules = dict(model.named_modules())
    prefix = _layers_prefix(model)
    rows: list[list[Any]] = []
    for name, param in model.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        owner = modules.get(owner_name)
        if owner is output:
            role = "lm_head"
        elif isinstance(owner, torch.nn.Embedding):
            role = "embedding"
        elif type(owner) is torch.nn.Linear:
            role = "linear" if leaf == "weight" else "bias"
        elif param.dim() == 1:
            role = "bias" if leaf == "bias" else "norm"
        elif param.dim() == 3:
            role = "experts"
        else:
            role = "router"
        rows.append([name, list(param.shape), role, owner_name.rpartition(".")[2], _layer_index(name, prefix)])
    return rows


@contextlib.contextmanager
def _status(message: str) -> Iterator[None]:
    """A transient status line on a terminal's stderr (pipes and tests see nothing)."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
