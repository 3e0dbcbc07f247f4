"""The strict reader of a model's config.json: every shape field vramplan reads is checked as physics first.

One reader for every way a config arrives (preset, file, folder, HF cache or hub), so a bad field is one
`ConfigFileError` line naming the file and the field, never a traceback, a hang or a negative byte count.

- Types as the modeling code needs them: a count is a JSON integer (a bool is not an int, a string or 4096.0 is
  not a count: `nn.Linear(4096.0, ...)` raises), a flag is a JSON bool (`"no"` is truthy in Python and would
  silently tie the embeddings), a float factor is a finite number.
- Ranges: at least 1 (0 where transformers treats 0 as "none", e.g. Qwen-MoE `num_experts: 0` is a dense
  model) and at most a bound far above every released model, so that a typo (`num_hidden_layers: 10000000`)
  cannot make the inventory build millions of tensors.
- Divisibility, as the attention modules reshape: without `head_dim`, `hidden_size / num_attention_heads` must
  be whole (transformers' `head_dim = hidden_size // num_attention_heads` would silently drop the remainder);
  grouped-query attention repeats each KV head `num_attention_heads / num_key_value_heads` times
  (`repeat_kv`), so that must be whole too. Top-k routing picks `num_experts_per_tok` of the experts.
- What each native family's inventory reads (`vramplan.inventory`) must be present: no guessed defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vramplan.errors import ConfigFileError

# field -> (min, max). Maxima: ~40x the largest released model's value, or more.
COUNTS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 1 << 20),
    "num_hidden_layers": (1, 4096),
    "num_attention_heads": (1, 1 << 16),
    "num_key_value_heads": (1, 1 << 16),
    "head_dim": (1, 1 << 16),
    "vocab_size": (1, 1 << 24),
    "intermediate_size": (1, 1 << 22),
    "moe_intermediate_size": (1, 1 << 22),
    "shared_expert_intermediate_size": (1, 1 << 22),
    "num_local_experts": (1, 1 << 16),
    "num_experts": (0, 1 << 16),  # Qwen-MoE: 0 means every layer is dense
    "num_experts_per_tok": (1, 1 << 16),
    "decoder_sparse_step": (1, 4096),
    "max_position_embeddings": (1, 1 << 30),
    "sliding_window": (1, 1 << 30),
}
FLAGS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window")
FACTORS: dict[str, tuple[float, float]] = {  # finite, lo < value <= hi
    "partial_rotary_factor": (0.0, 1.0),
    "attn_logit_softcapping": (0.0, math.inf),
    "final_logit_softcapping": (0.0, math.inf),
}
REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# What `vramplan.inventory` reads with cfg[...] for each native family, beyond REQUIRED.
FAMILY_REQUIRED: dict[str, tuple[str, ...]] = {
    "mixtral": ("intermediate_size", "num_local_experts", "num_experts_per_tok"),
    "qwen2_moe": ("intermediate_size", "num_experts", "moe_intermediate_size", "num_experts_per_tok",
                  "shared_expert_intermediate_size"),
    "qwen3_moe": ("intermediate_size", "num_experts", "moe_intermediate_size", "num_experts_per_tok"),
}
DENSE_REQUIRED = ("intermediate_size",)


def text_part(cfg: Mapping[str, Any], source: str, native: tuple[str, ...]) -> Mapping[str, Any]:
    """A multimodal wrapper's language-model config (`text_config`), or `cfg` itself."""
    if "text_config" not in cfg or cfg.get("model_type") in native:
        return cfg
    text = cfg["text_config"]
    if not isinstance(text, dict):
        raise ConfigFileError(f"{source}: text_config must be a JSON object, got {_shown(text)}")
    return {**text, "model_type": text.get("model_type", cfg.get("model_type"))}


def check_config(cfg: Mapping[str, Any], source: str, native: tuple[str, ...]) -> None:
    """Raise one `ConfigFileError` line for the first field that is not physics (see the module docstring)."""
    missing = [k for k in REQUIRED if cfg.get(k) is None]
    if missing:
        raise ConfigFileError(f"{source}: missing {', '.join(missing)} (is this a causal LM config.json?)")
    if not isinstance(cfg["model_type"], str) or not cfg["model_type"]:
        raise ConfigFileError(f"{source}: model_type must be a string, got {_shown(cfg['model_type'])}")
    for key, (lo, hi) in COUNTS.items():
        if cfg.get(key) is not None:
            _count(cfg[key], key, lo, hi, source)
    for key in FLAGS:
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            raise ConfigFileError(f"{source}: {key} must be true or false, got {_shown(cfg[key])}")
    for key, (lo, hi) in FACTORS.items():
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or not lo < v <= hi):
            bound = f"in ({lo:g}, {hi:g}]" if math.isfinite(hi) else f"above {lo:g}"
            raise ConfigFileError(f"{source}: {key} must be a finite number {bound}, got {_shown(v)}")
    mt = cfg["model_type"]
    if mt in native:
        missing = [k for k in FAMILY_REQUIRED.get(mt, DENSE_REQUIRED) if cfg.get(k) is None]
        if missing:
            raise ConfigFileError(f"{source}: missing {', '.join(missing)} (a {mt} config needs them)")
    _check_layer_lists(cfg, source)
    _check_shapes(cfg, source)


def _count(v: Any, key: str, lo: int, hi: int, source: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigFileError(f"{source}: {key} must be an integer, got {_shown(v)}")
    if not lo <= v <= hi:
        raise ConfigFileError(f"{source}: {key} must be an integer from {lo} to {hi}, got {v}")


def _check_layer_lists(cfg: Mapping[str, Any], source: str) -> None:
    layers = cfg["num_hidden_layers"]
    only = cfg.get("mlp_only_layers")
    if only is not None and (not isinstance(only, list)
                             or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < layers
                                        for i in only)):
        raise ConfigFileError(f"{source}: mlp_only_layers must be a list of layer indices 0-{layers - 1}")
    types = cfg.get("layer_types")
    if types is not None and (not isinstance(types, list) or len(types) != layers
                              or not all(isinstance(t, str) for t in types)):
        raise ConfigFileError(f"{source}: layer_types must list one attention type (a string) per layer "
                              f"({layers})")


def _check_shapes(cfg: Mapping[str, Any], source: str) -> None:
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("head_dim") is None and hidden % heads:
        raise ConfigFileError(f"{source}: num_attention_heads ({heads}) must divide hidden_size ({hidden}) "
                              "when head_dim is not given")
    kv = cfg.get("num_key_value_heads")
    if kv is not None and heads % kv:
        raise ConfigFileError(f"{source}: num_key_value_heads ({kv}) must divide num_attention_heads ({heads})")
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    top_k = cfg.get("num_experts_per_tok")
    if experts and top_k is not None and top_k > experts:
        raise ConfigFileError(f"{source}: num_experts_per_tok ({top_k}) exceeds the expert count ({experts})")


def _shown(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."
