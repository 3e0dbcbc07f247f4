"""Inventory of an architecture with no hand-written spec: build the transformers class on the meta device.

No memory, no weights: `torch.device("meta")` gives every parameter its shape and nothing else (the trick
accelerate's `estimate-memory` command uses). Roles follow what transformers' bitsandbytes integration does:
only modules whose type *is* `nn.Linear` get quantized, and never the output embedding.

Importing torch and transformers and building the model takes seconds (17-29 s measured on a loaded 2-core
machine), so the result is kept on disk: one JSON record per config and transformers version under
`$VRAMPLAN_CACHE_DIR` (else `$XDG_CACHE_HOME/vramplan`, else `~/.cache/vramplan`), `specs/<key>.json`. The record
is generic: the parameter tensors, and a `traits` slot with the layer traits `vramplan.measure.meta_traits`
derives from the same build (`traits_record`), and a `config` slot with the shape fields under their common
names (`config_fields`: GPT-BigCode's `n_embd`/`n_head`/`n_layer`, Falcon's `num_kv_heads`/`multi_query`, read
through transformers' config class and the built attention). A second call reads the record and imports no torch. On a
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
from vramplan.traits import Traits

RECORD_VERSION = 4  # bump when the record's layout or the derivation changes


def cache_dir() -> Path:
    """Where derived records live (vramplan.datafiles.cache_dir: the one rule for vramplan's cache folder)."""
    from vramplan.datafiles import cache_dir as folder

    return Path(folder())


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
                      for name, shape, role, module, layer in record["tensors"]],
                     buffer_bytes=int(record.get("buffer_bytes") or 0))


def traits_record(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `traits` slot of `cfg`'s record (the fields of `vramplan.traits.Traits`), derived with the inventory
    from one meta build. An architecture whose layer meta_traits cannot read raises its error again."""
    record = meta_record(cfg)
    if record.get("traits") is None and not record.get("traits_error"):  # a record written before traits existed
        record = _build_and_store(cfg)
    if record.get("traits_error"):
        raise UnsupportedArchitectureError(record["traits_error"])
    return dict(record["traits"])


def config_fields(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(shape fields, aliases) of `cfg`: the fields under the names a Llama config uses (hidden_size,
    num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size,
    tie_word_embeddings, max_position_embeddings) as transformers' config class and the built layers give them,
    and the config class's `attribute_map` (common name -> the architecture's own: GPT-BigCode `hidden_size` ->
    `n_embd`)."""
    record = meta_record(cfg)
    if record.get("config") is None:
        record = _build_and_store(cfg)
    return dict(record["config"]), dict(record.get("aliases") or {})


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
                              "model_type": cfg.get("model_type"), "tensors": _tensors(model), "traits": None,
                              "config": _config_fields(model), "buffer_bytes": _buffer_bytes(model),
                              "aliases": dict(getattr(type(model.config), "attribute_map", {}) or {})}
    try:
        from vramplan.measure.meta_traits import derive_traits
    except ImportError:
        return record
    try:
        record["traits"] = asdict(derive_traits(model, cfg))
    except UnsupportedArchitectureError as exc:
        record["traits_error"] = str(exc)
    return record


def _buffer_bytes(model) -> int:
    """Bytes of the model's buffers (persistent or not) outside its rotary embeddings, whose `inv_freq` tables
    `weights.rotary_buffer_bytes` counts (GPT-BigCode's bool causal mask). The meta build is fp32: a floating
    buffer is counted at 4 bytes, at most what a 16-bit load keeps."""
    rotary = {n for n, m in model.named_modules() if "rotary" in type(m).__name__.lower()}
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers()
               if n.rpartition(".")[0] not in rotary)


def _config_fields(model) -> dict[str, Any]:
    """Shape fields from the config object (its `attribute_map` turns `n_embd` into `hidden_size`) and, for the
    key/value heads and the MLP width, from the first decoder layer's modules: the attention's own count
    (`num_key_value_heads`, GPT-BigCode `kv_heads`, Falcon `num_kv_heads`), else the config's; the MLP's first
    linear (half of a fused gate_up)."""
    c = model.config
    fields = {k: getattr(c, k, None) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "vocab_size", "max_position_embeddings")}
    fields["tie_word_embeddings"] = bool(getattr(c, "tie_word_embeddings", False))
    attn = mlp = None
    try:
        from vramplan.measure.meta_traits import decoder_layers

        layer = decoder_layers(model)[1][0]
        attn = next((m for _, m in layer.named_children() if "attention" in type(m).__name__.lower()), None)
        mlp = next((m for _, m in layer.named_children() if "mlp" in type(m).__name__.lower()), None)
    except (ImportError, UnsupportedArchitectureError, IndexError):
        pass
    heads = fields["num_attention_heads"]
    kv = next((getattr(m, k) for m in (attn, c) if m is not None
               for k in ("num_key_value_heads", "kv_heads", "num_kv_heads") if isinstance(getattr(m, k, None), int)),
              None)
    if getattr(c, "multi_query", False) and not getattr(c, "new_decoder_architecture", False):
        kv = 1  # GPT-BigCode, Falcon-7B: one key/value head
    fields["num_key_value_heads"] = kv or heads
    hd = getattr(attn, "head_dim", None) or getattr(c, "head_dim", None)
    fields["head_dim"] = int(hd) if hd else fields["hidden_size"] // heads
    inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or getattr(c, "ffn_hidden_size", None)
    first = next((m for m in (mlp.children() if mlp is not None else ()) if hasattr(m, "out_features")), None)
    if first is not None:
        inter = first.out_features // (2 if first.out_features == 2 * _last_in(mlp) else 1)
    fields["intermediate_size"] = int(inter or 4 * fields["hidden_size"])
    return fields


def _last_in(mlp) -> int:
    last = [m for m in mlp.children() if hasattr(m, "in_features")]
    return last[-1].in_features if last else -1


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


def traits_from_meta(cfg: Mapping[str, Any]) -> Traits:
    """Read from the fallback's on-disk record (`traits_record` below: derived with the inventory from
    one meta build); a record written by another version of `Traits` is derived again here."""
    return _traits(json.dumps(dict(cfg), sort_keys=True, default=str))


@lru_cache(maxsize=64)
def _traits(cfg_json: str) -> Traits:
    from dataclasses import fields

    cfg = json.loads(cfg_json)
    record = traits_record(cfg)
    if set(record) == {f.name for f in fields(Traits)}:
        return Traits(**record)
    from vramplan.measure.meta_traits import derive_traits, meta_model

    return derive_traits(meta_model(cfg), cfg)
