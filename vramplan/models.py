"""Model specs: resolve `--model` to an HF config and its exact parameter inventory.

`--model` accepts, in this order: a built-in preset name or alias; a path to a `config.json`; a path to a model
folder holding one; an HF hub id, read from the local HF cache (and, when the network is reachable and
`HF_HUB_OFFLINE` is not set, `config.json` alone is fetched: never weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from vramplan.errors import ConfigFileError, UnknownModelError, UnsupportedArchitectureError, did_you_mean
from vramplan.inventory import NATIVE_ARCHITECTURES, Inventory, build_inventory, head_dim, is_tied

_REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
ACCEPTED_FORMS = "a preset name (see `vramplan models`), a config.json path, a model folder, or a cached HF hub id"


class Preset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    slug: str
    hub_id: str
    aliases: list[str] = []
    family: str = ""
    params_b: float = 0.0
    source: str = ""


class ModelSpec(BaseModel):
    """A model's shape facts, read from its config. `inventory` lists every parameter tensor."""

    model_config = ConfigDict(frozen=True, ignored_types=(cached_property,))

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
        from vramplan.measure.meta_inventory import inventory_from_meta  # torch: only for exotic architectures

        return inventory_from_meta(self.config)

    @property
    def num_params(self) -> int:
        return self.inventory.total_numel


# Presets ------------------------------------------------------------------------------------------------------


@cache
def presets() -> dict[str, Preset]:
    """slug -> Preset, from vramplan/presets/index.toml (read once, on first use)."""
    text = resources.files("vramplan.presets").joinpath("index.toml").read_text()
    return {slug: Preset(slug=slug, **entry) for slug, entry in tomllib.loads(text).items()}


@cache
def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for slug, p in presets().items():
        for name in (slug, p.hub_id, *p.aliases):
            table[name.lower()] = slug
    return table


def preset_config(slug: str) -> dict[str, Any]:
    return json.loads(resources.files("vramplan.presets").joinpath(f"{slug}.json").read_text())


# Resolution ---------------------------------------------------------------------------------------------------


def spec_from_config(cfg: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    """Validate a config dict's shape fields and build the spec (raises ConfigFileError / Unsupported...)."""
    if "text_config" in cfg and cfg.get("model_type") not in NATIVE_ARCHITECTURES:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ConfigFileError(f"{source}: missing {', '.join(missing)} (is this a causal LM config.json?)")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise ConfigFileError(f"{source}: {k} must be a positive integer, got {cfg[k]!r}")
    mt = cfg["model_type"]
    if mt not in NATIVE_ARCHITECTURES and not _meta_fallback_available():
        raise UnsupportedArchitectureError(
            f"{source}: architecture '{mt}' has no native spec (native: {', '.join(NATIVE_ARCHITECTURES)}); "
            "install vramplan[measure] to read it from transformers on the meta device"
        )
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    return ModelSpec(
        name=name,
        source=source,
        model_type=mt,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg.get("intermediate_size") or 4 * cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        head_dim=head_dim(cfg),
        vocab_size=cfg["vocab_size"],
        tied_embeddings=is_tied(cfg),
        num_experts=experts,
        experts_per_token=cfg.get("num_experts_per_tok") or 0,
        config=dict(cfg),
    )


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

    url = f"https://huggingface.co/{hub_id}/resolve/main/config.json"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (fixed https host)
            return json.loads(resp.read())
    except Exception:  # offline, gated, not found: the caller reports the accepted forms
        return None


def resolve_model(name: str) -> ModelSpec:
    """Turn `--model` into a ModelSpec, or raise a one-line error listing the accepted forms."""
    slug = _alias_table().get(name.strip().lower())
    if slug:
        return spec_from_config(preset_config(slug), slug, "preset")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigFileError(f"{path}: folder has no config.json")
        path = path / "config.json"
    if path.is_file():
        return spec_from_config(_read_config_file(path), path.parent.name or path.stem, str(path))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        cached = _config_from_hf_cache(name)
        if cached:
            return spec_from_config(_read_config_file(cached), name, f"hf-cache:{name}")
        fetched = _fetch_config(name)
        if fetched is not None:
            return spec_from_config(fetched, name, f"hf-hub:{name}")
    hint = did_you_mean(name, list(_alias_table()))
    raise UnknownModelError(f"unknown model '{name}'{hint}; give {ACCEPTED_FORMS}")
