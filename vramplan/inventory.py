"""The parameter inventory: every weight tensor a transformers model builds from a config, with its role.

Written by hand per architecture family (pure Python, no torch) and checked tensor by tensor against the real
transformers class built on the meta device (tests/test_inventory.py). The role decides what QLoRA does with a
tensor: transformers' bitsandbytes integration replaces only modules whose type *is* `nn.Linear`
(`integrations/bitsandbytes.py: replace_with_bnb_linear`) and never the output embedding
(`quantizers/base.py: get_keys_to_not_convert`), so in transformers 5 the 3-D fused expert weights of MoE
models (`MixtralExperts.gate_up_proj`, ...) stay 16-bit under QLoRA.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal, NamedTuple

Role = Literal["linear", "bias", "embedding", "lm_head", "norm", "router", "experts"]
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]


# NamedTuples, not dataclasses: the classes are made on every cold start (a dataclass's generated methods take
# ~0.5 ms each) and a model lists hundreds of tensors (a NamedTuple is built 2.5x faster than a frozen dataclass).
class ParamTensor(NamedTuple):
    """One parameter. `module` is the leaf module name LoRA targets use (`q_proj`), `layer` its decoder index."""

    name: str
    shape: tuple[int, ...]
    role: Role
    module: str
    layer: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class LinearGroup(NamedTuple):
    """All `nn.Linear` modules sharing a leaf name (e.g. every layer's `q_proj`): count and summed sizes."""

    module: str
    count: int
    weight_numel: int  # summed over the group
    in_features: int  # summed over the group (LoRA A has rank x in)
    out_features: int  # summed over the group (LoRA B has out x rank)
    bias_numel: int


class Inventory:
    """The parameter list of a model plus the aggregates the estimator needs (computed once, cached)."""

    def __init__(self, tensors: list[ParamTensor], buffer_bytes: int = 0):
        self.tensors = tensors
        # buffers other than the rotary tables (`weights.rotary_buffer_bytes`), in their own dtypes: GPT-BigCode's
        # [n_positions, n_positions] bool causal mask `transformer.bias` (meta_inventory reads them)
        self.buffer_bytes = buffer_bytes

    @cached_property
    def numel_by_role(self) -> dict[str, int]:
        out = dict.fromkeys(ROLES, 0)
        for t in self.tensors:
            out[t.role] += t.numel
        return out

    @cached_property
    def total_numel(self) -> int:
        return sum(self.numel_by_role.values())

    @cached_property
    def linear_groups(self) -> dict[str, LinearGroup]:
        """Decoder-layer linears (not lm_head) grouped by leaf module name, in model order."""
        acc: dict[str, list[int]] = {}
        for t in self.tensors:
            if t.role == "linear":
                g = acc.setdefault(t.module, [0, 0, 0, 0, 0])
                g[0] += 1
                g[1] += t.numel
                g[2] += t.shape[1]
                g[3] += t.shape[0]
            elif t.role == "bias" and t.module in acc:
                acc[t.module][4] += t.numel
        return {m: LinearGroup(m, *v) for m, v in acc.items()}

    @cached_property
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """name -> (out, in) of every nn.Linear weight, lm_head included (for the meta-model test)."""
        return {t.name: t.shape for t in self.tensors if t.role in ("linear", "lm_head") and len(t.shape) == 2}


# Per-family facts read from the transformers modeling files (5.x).
_QKV_BIAS_ALWAYS = {"qwen2", "qwen2_moe"}  # modeling_qwen2.py: q/k/v bias=True, o_proj bias=False
_ATTN_BIAS_FIELD = {"llama", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text"}  # q,k,v,o follow attention_bias
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3_text"}  # per-head RMSNorm on q and k (head_dim,)
_SANDWICH_NORMS = {"gemma2", "gemma3_text"}  # pre/post feed-forward norms besides the usual two
_FUSED = {"phi3"}  # qkv_proj and gate_up_proj
_MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}
NATIVE_ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
)
_TIED_DEFAULT = {"gemma", "gemma2", "gemma3_text"}  # their config classes default tie_word_embeddings=True


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key)
    return default if value is None else value


def head_dim(cfg: Mapping[str, Any]) -> int:
    return int(_get(cfg, "head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]))


def is_tied(cfg: Mapping[str, Any]) -> bool:
    return bool(_get(cfg, "tie_word_embeddings", cfg.get("model_type") in _TIED_DEFAULT))


def _is_moe_layer(cfg: Mapping[str, Any], mt: str, i: int) -> bool:
    if mt == "mixtral":
        return True
    if mt not in _MOE:
        return False
    # modeling_qwen3_moe.py / modeling_qwen2_moe.py: sparse unless listed in mlp_only_layers or off the step
    step = int(_get(cfg, "decoder_sparse_step", 1))
    return i not in _get(cfg, "mlp_only_layers", []) and _get(cfg, "num_experts", 0) > 0 and (i + 1) % step == 0


def _attention(cfg: Mapping[str, Any], mt: str, p: str, i: int) -> list[ParamTensor]:
    h, hd = cfg["hidden_size"], head_dim(cfg)
    q, kv = cfg["num_attention_heads"] * hd, _get(cfg, "num_key_value_heads", cfg["num_attention_heads"]) * hd
    out: list[ParamTensor] = []
    if mt in _FUSED:
        out.append(ParamTensor(f"{p}.qkv_proj.weight", (q + 2 * kv, h), "linear", "qkv_proj", i))
        out.append(ParamTensor(f"{p}.o_proj.weight", (h, q), "linear", "o_proj", i))
        return out
    attn_bias = bool(_get(cfg, "attention_bias", False)) if mt in _ATTN_BIAS_FIELD else False
    for name, shape in (("q_proj", (q, h)), ("k_proj", (kv, h)), ("v_proj", (kv, h)), ("o_proj", (h, q))):
        out.append(ParamTensor(f"{p}.{name}.weight", shape, "linear", name, i))
        if attn_bias or (mt in _QKV_BIAS_ALWAYS and name != "o_proj"):
            out.append(ParamTensor(f"{p}.{name}.bias", (shape[0],), "bias", name, i))
    if mt in _QK_NORM:
        out.append(ParamTensor(f"{p}.q_norm.weight", (hd,), "norm", "q_norm", i))
        out.append(ParamTensor(f"{p}.k_norm.weight", (hd,), "norm", "k_norm", i))
    return out


def _dense_mlp(p: str, h: int, inter: int, i: int, fused: bool, bias: bool) -> list[ParamTensor]:
    if fused:
        return [
            ParamTensor(f"{p}.gate_up_proj.weight", (2 * inter, h), "linear", "gate_up_proj", i),
            ParamTensor(f"{p}.down_proj.weight", (h, inter), "linear", "down_proj", i),
        ]
    out: list[ParamTensor] = []
    for name, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
        out.append(ParamTensor(f"{p}.{name}.weight", shape, "linear", name, i))
        if bias:
            out.append(ParamTensor(f"{p}.{name}.bias", (shape[0],), "bias", name, i))
    return out


def _mlp(cfg: Mapping[str, Any], mt: str, p: str, i: int) -> list[ParamTensor]:
    h = cfg["hidden_size"]
    if not _is_moe_layer(cfg, mt, i):
        bias = bool(_get(cfg, "mlp_bias", False)) if mt == "llama" else False
        return _dense_mlp(p, h, cfg["intermediate_size"], i, mt in _FUSED, bias)
    if mt == "mixtral":
        n_exp, inter = cfg["num_local_experts"], cfg["intermediate_size"]
    else:
        n_exp, inter = cfg["num_experts"], cfg["moe_intermediate_size"]
    # transformers 5 fuses experts into 3-D parameters (MixtralExperts / Qwen3MoeExperts): not nn.Linear.
    out = [
        ParamTensor(f"{p}.gate.weight", (n_exp, h), "router", "gate", i),
        ParamTensor(f"{p}.experts.gate_up_proj", (n_exp, 2 * inter, h), "experts", "experts", i),
        ParamTensor(f"{p}.experts.down_proj", (n_exp, h, inter), "experts", "experts", i),
    ]
    if mt == "qwen2_moe":
        shared = cfg["shared_expert_intermediate_size"]
        out += _dense_mlp(f"{p}.shared_expert", h, shared, i, False, False)
        out.append(ParamTensor(f"{p}.shared_expert_gate.weight", (1, h), "linear", "shared_expert_gate", i))
    return out


def _layer_norms(mt: str, p: str, h: int, i: int) -> list[ParamTensor]:
    names = ["input_layernorm", "post_attention_layernorm"]
    if mt in _SANDWICH_NORMS:
        names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    return [ParamTensor(f"{p}.{n}.weight", (h,), "norm", n, i) for n in names]


def build_inventory(cfg: Mapping[str, Any]) -> Inventory:
    """The parameter inventory of a natively supported architecture, keyed like `named_parameters()`.

    Tied embeddings are counted once (the `lm_head.weight` that shares `embed_tokens.weight` is not listed,
    as `named_parameters()` de-duplicates it).
    """
    mt = cfg["model_type"]
    h, vocab = cfg["hidden_size"], cfg["vocab_size"]
    tensors = [ParamTensor("model.embed_tokens.weight", (vocab, h), "embedding", "embed_tokens")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        tensors += _attention(cfg, mt, f"{p}.self_attn", i)
        tensors += _mlp(cfg, mt, f"{p}.mlp", i)
        tensors += _layer_norms(mt, p, h, i)
    tensors.append(ParamTensor("model.norm.weight", (h,), "norm", "norm"))
    if not is_tied(cfg):
        tensors.append(ParamTensor("lm_head.weight", (vocab, h), "lm_head", "lm_head"))
    return Inventory(tensors)
