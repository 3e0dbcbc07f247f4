"""Model specs: resolve `--model` to an HF config and its exact parameter inventory.

`--model` accepts, in this order: a built-in preset name or alias; a path to a `config.json`; a path to a model
folder holding one; an HF hub id, read from the local HF cache (and, when the network is reachable and
`HF_HUB_OFFLINE` is not set, `config.json` alone is fetched: never weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import field
from functools import cache, cached_property
from pathlib import Path
from typing import Any, TypeVar

from vramplan.config_schema import check_config, text_part
from vramplan.errors import (
    ConfigFileError,
    UnknownModelError,
    UnsupportedArchitectureError,
    did_you_mean,
)
from vramplan.inventory import (
    NATIVE_ARCHITECTURES,
    Inventory,
    build_inventory,
    head_dim,
    is_tied,
)
from vramplan.record import Record

ACCEPTED_FORMS = "a preset name (see `vramplan models`), a config.json path, a model folder, or a cached HF hub id"


class Preset(Record):
    extra = "ignore"

    slug: str
    hub_id: str
    aliases: list[str] = field(default_factory=list)
    family: str = ""
    params_b: float = 0.0
    source: str = ""


class ModelSpec(Record):
    """A model's shape facts, read from its config. `inventory` lists every parameter tensor."""

    error = ConfigFileError

    name: str
    source: str  # "preset", a file path, or "hf-cache:<id>"
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    num_experts: int = 0
    experts_per_token: int = 0
    config: dict[str, Any]

    @cached_property
    def inventory(self) -> Inventory:
        if self.model_type in NATIVE_ARCHITECTURES:
            return build_inventory(self.config)
        from vramplan.measure.meta_inventory import (
            inventory_from_meta,  # torch: only for exotic architectures
        )

        return inventory_from_meta(self.config)

    @property
    def num_params(self) -> int:
        return self.inventory.total_numel

    @cached_property
    def fingerprint(self) -> str:
        """What the model's derived facts depend on: its config (every shape, the inventory, the traits are read
        from it), as its canonical JSON text (a key within this process: no digest, so no hashlib import on a cold
        start). Two specs of one config share `ModelCache` entries."""
        return json.dumps(self.config, sort_keys=True, default=str)


T = TypeVar("T")


class ModelCache:
    """One memo for what is derived from a model and a few plan fields (units, static memory, a step's allocation
    sequence, an allocator replay): keyed on the model's fingerprint and the caller's key, cleared whole when it
    holds `max_entries` (the search asks for many plans of one model; a long-lived process moves on)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[str, Hashable], Any] = {}

    def get(self, model: ModelSpec, key: Hashable, compute: Callable[[], T]) -> T:
        """The value for (model, key), computed by `compute()` the first time."""
        k = (model.fingerprint, key)
        try:
            return self._entries[k]
        except KeyError:
            pass
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        value = self._entries[k] = compute()
        return value


# Presets ------------------------------------------------------------------------------------------------------


@cache
def presets() -> dict[str, Preset]:
    """slug -> Preset, from vramplan/presets/index.toml (read once, on first use)."""
    from vramplan.presets import read_index

    return {slug: Preset.from_dict({**entry, "slug": slug}) for slug, entry in read_index().items()}


@cache
def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for slug, p in presets().items():
        for name in (slug, p.hub_id, *p.aliases):
            table[name.lower()] = slug
    return table


def preset_config(slug: str) -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "presets" / f"{slug}.json").read_text())


@cache
def preset_spec(slug: str) -> ModelSpec:
    """A preset's spec, built once per process: presets are package data that never change while it runs, so
    the slug is a sound key, and every later lookup shares one spec (and its cached inventory)."""
    return spec_from_config(preset_config(slug), slug, "preset")


_FILE_SPECS: dict[tuple[str, str, int, int], ModelSpec] = {}
_FILE_SPECS_MAX = 64


def _file_spec(path: Path, name: str, source: str) -> ModelSpec:
    """A config file's spec, cached on (resolved path, name, mtime in ns, size): an edited file is read again."""
    stat = path.stat()
    key = (str(path.resolve()), name, stat.st_mtime_ns, stat.st_size)
    spec = _FILE_SPECS.get(key)
    if spec is None:
        spec = spec_from_config(_read_config_file(path), name, source)
        if len(_FILE_SPECS) >= _FILE_SPECS_MAX:
            _FILE_SPECS.pop(next(iter(_FILE_SPECS)))
        _FILE_SPECS[key] = spec
    return spec


# Resolution ---------------------------------------------------------------------------------------------------


def spec_from_config(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    """Validate a config dict's shape fields (`vramplan.config_schema`) and build the spec (raises
    ConfigFileError / UnsupportedArchitectureError)."""
    cfg = text_part(cfg, source, NATIVE_ARCHITECTURES)
    mt = cfg.get("model_type")
    shape = cfg
    if isinstance(mt, str) and mt and mt not in NATIVE_ARCHITECTURES:
        if not _meta_fallback_available():
            check_config(cfg, source, NATIVE_ARCHITECTURES)
            raise UnsupportedArchitectureError(
                f"{source}: architecture '{mt}' has no native spec (native: {', '.join(NATIVE_ARCHITECTURES)}); "
                "install vramplan[measure] to read it from transformers on the meta device"
            )
        shape = _fallback_shape(cfg, source)
    check_config(shape, source, NATIVE_ARCHITECTURES)
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    return ModelSpec(
        name=name,
        source=source,
        model_type=shape["model_type"],
        hidden_size=shape["hidden_size"],
        intermediate_size=shape.get("intermediate_size") or 4 * shape["hidden_size"],
        num_layers=shape["num_hidden_layers"],
        num_heads=shape["num_attention_heads"],
        num_kv_heads=shape.get("num_key_value_heads") or shape["num_attention_heads"],
        head_dim=head_dim(shape),
        vocab_size=shape["vocab_size"],
        tied_embeddings=is_tied(shape),
        num_experts=experts,
        experts_per_token=cfg.get("num_experts_per_tok") or 0,
        config=dict(cfg),
    )


_DERIVED = ("num_key_value_heads", "head_dim", "intermediate_size", "tie_word_embeddings")


def _fallback_shape(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """A config of another architecture under Llama's field names: its own names through the config class's
    `attribute_map` (GPT-BigCode `n_embd`, `n_head`, `n_layer`), and the key/value heads, head size and MLP width
    as the built layers have them (GPT-BigCode and Falcon-7B `multi_query`: one key/value head). A field the
    config gives under no name stays missing (check_config says so). The meta build is cached on disk."""
    from vramplan.measure.meta_inventory import config_fields  # torch: only for other architectures

    try:
        fields, aliases = config_fields(cfg)
    except UnsupportedArchitectureError:
        check_config(cfg, source, NATIVE_ARCHITECTURES)  # a missing or bad field says so first
        raise
    named = {**cfg, **{k: cfg[a] for k, a in aliases.items() if cfg.get(k) is None and cfg.get(a) is not None}}
    return {**named, **{k: fields[k] for k in _DERIVED if fields.get(k) is not None}}


def context_warning(model: str | ModelSpec, seq: int) -> str | None:
    """A one-line warning when `seq` is beyond the model's positions (`max_position_embeddings`): the memory is
    still what the step allocates (nothing in transformers stops a longer input), but rotary models were not
    trained that far and learned absolute positions would index out of range. None when within."""
    spec = resolve_model(model) if isinstance(model, str) else model
    cap = spec.config.get("max_position_embeddings")
    if not cap or seq <= cap:
        return None
    return (f"--seq {seq} is beyond {spec.name}'s context of {cap} tokens (max_position_embeddings): the memory is "
            "estimated, but the model was not trained on positions that far")


def _meta_fallback_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(cfg, dict):
        raise ConfigFileError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _hf_cache_dirs() -> list[Path]:
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return [home / "hub"]


def _config_from_hf_cache(hub_id: str) -> Path | None:
    folder = "models--" + hub_id.replace("/", "--")
    for root in _hf_cache_dirs():
        snapshots = sorted((root / folder / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        if snapshots:
            return snapshots[-1]
    return None


def _fetch_config(hub_id: str) -> dict[str, Any] | None:
    """config.json only, never weights; None when offline or the hub does not answer within 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("VRAMPLAN_OFFLINE"):
        return None
    import urllib.request
    from http.client import HTTPException

    url = f"https://huggingface.co/{hub_id}/resolve/main/config.json"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (fixed https host)
            data = json.loads(resp.read())
    # offline, timed out, gated or not found (URLError/HTTPError are OSErrors), a broken reply, not JSON (ValueError
    # covers JSONDecodeError and UnicodeDecodeError): the caller reports the accepted forms
    except (OSError, HTTPException, ValueError):
        return None
    return data if isinstance(data, dict) else None


def config_file_name(path: Path, folder_given: bool) -> str:
    """The name a config file's model is shown by: the folder's name when a folder was given (HF's layout: the
    folder is the model); for a file, the config's own `_name_or_path` (transformers writes the hub id or
    folder it was saved from), else the file's stem, except the generic `config.json`, named after its folder."""
    if folder_given:
        return path.parent.resolve().name or path.stem
    try:
        named = json.loads(path.read_text()).get("_name_or_path")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        named = None
    if isinstance(named, str) and named.strip():
        return named.strip().rstrip("/").split("/")[-1] if named.startswith(("/", ".")) else named.strip()
    if path.stem == "config":
        return path.parent.resolve().name or path.stem
    return path.stem


def resolve_model(name: str) -> ModelSpec:
    """Turn `--model` into a ModelSpec, or raise a one-line error listing the accepted forms."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"empty model name; give {ACCEPTED_FORMS}")
    slug = _alias_table().get(name.strip().lower())
    if slug:
        return preset_spec(slug)
    path = Path(name).expanduser()
    folder_given = path.is_dir()
    if folder_given:
        if not (path / "config.json").is_file():
            raise ConfigFileError(f"{path}: folder has no config.json")
        path = path / "config.json"
    if path.is_file():
        return _file_spec(path, config_file_name(path, folder_given), str(path))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        cached = _config_from_hf_cache(name)
        if cached:
            return _file_spec(cached, name, f"hf-cache:{name}")
        fetched = _fetch_config(name)
        if fetched is not None:
            return spec_from_config(fetched, name, f"hf-hub:{name}")
    hint = did_you_mean(name, list(_alias_table()))
    raise UnknownModelError(f"unknown model '{name}'{hint}; give {ACCEPTED_FORMS}")
