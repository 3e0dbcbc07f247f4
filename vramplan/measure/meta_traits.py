"""Traits of an architecture with no hand-written record, read from the transformers model on the meta device.

The decoder layer stack is the `nn.ModuleList` as long as `num_hidden_layers` (`model.layers`, GPT-NeoX's
`gpt_neox.layers`, GPT-BigCode's `transformer.h`). In its first layer:
- norms are the children that are `nn.LayerNorm` or whose class is an RMSNorm; `nn.LayerNorm` with a bias or not;
- the layout follows the norms' names and the config: one norm before both branches (Phi-2, Cohere) or
  `use_parallel_residual` / `parallel_attn` -> parallel; four norms -> sandwich (Gemma 2); only `post_*` norms ->
  post-norm (OLMo-2); otherwise pre-norm (Llama);
- the attention block is the child whose class name has "Attention"; its `nn.Linear` children in definition order
  are q, k, v, o, or a fused qkv (out = q + 2 kv) and o; its norm children are q/k norms, per head when they are
  `head_dim` wide, else over the projection (OLMo-2);
- the MLP is the child whose class name has "MLP": three linears are gate, up, down (gated); two are fc1, fc2
  (plain) unless the first is twice the second's input (Phi-3's fused gate_up);
- Granite's residual multiplier (the layer's `residual_multiplier` attribute) and a logit scale in the CausalLM's
  forward (Granite `logits_scaling`, Cohere `logit_scale`);
- the activation is the config's (`hidden_act`, `activation_function`, `hidden_activation`), the rotary share
  the attention's `rotary_ndims` (or `partial_rotary_factor`; 0 for a model with no rotary embedding module:
  GPT-BigCode's learned positions), the residual dropout the config's
  (`residual_dropout`, `resid_pdrop`, `hidden_dropout`).
A layer that does not fit these shapes raises UnsupportedArchitectureError, never a silent Llama estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import UnsupportedArchitectureError
from vramplan.traits import SINGLE_OP_ACTIVATIONS, Traits

_ACT_FIELDS = ("hidden_act", "activation_function", "hidden_activation")
_DROPOUT_FIELDS = ("residual_dropout", "resid_pdrop", "hidden_dropout")
_ATTN_DROPOUT_FIELDS = ("attention_dropout", "attn_pdrop")


def meta_model(cfg: Mapping[str, Any]):
    """The causal LM class built from `cfg` on the meta device (shapes only, no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 - unknown model_type, or no causal-LM class for it
        raise UnsupportedArchitectureError(
            f"transformers cannot build a causal LM for model_type '{cfg.get('model_type')}': {exc}"
        ) from None


def decoder_layers(model) -> tuple[str, Any]:
    """(path, ModuleList) of the decoder layers: the ModuleList as long as `num_hidden_layers`."""
    import torch

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0:
            return name, module
    raise UnsupportedArchitectureError(f"{model.config.model_type}: no list of {n} decoder layers found")


def _is_norm(module) -> bool:
    import torch

    name = type(module).__name__.lower()
    return isinstance(module, torch.nn.LayerNorm) or "rmsnorm" in name or "layernorm" in name


def _norm_kind(module) -> str:
    """nn.LayerNorm -> layer; an RMSNorm class -> rms; another LayerNorm class (Cohere's, fp32 tensor ops and
    no bias) -> layer_fp32."""
    import torch

    if isinstance(module, torch.nn.LayerNorm):
        return "layer"
    return "rms" if "rmsnorm" in type(module).__name__.lower() else "layer_fp32"


def _child(layer, word: str):
    for name, module in layer.named_children():
        if word in type(module).__name__.lower():
            return name, module
    raise UnsupportedArchitectureError(f"{type(layer).__name__}: no {word} block found")


def _linears(module) -> list[tuple[str, Any]]:
    import torch

    return [(n, m) for n, m in module.named_children() if type(m) is torch.nn.Linear]


def _first(cfg: Mapping[str, Any], fields: tuple[str, ...], default: Any) -> Any:
    for f in fields:
        if cfg.get(f) is not None:
            return cfg[f]
    return default


def derive_traits(model, cfg: Mapping[str, Any]) -> Traits:

    path, layers = decoder_layers(model)
    layer = layers[0]
    norms = [(n, m) for n, m in layer.named_children() if _is_norm(m)]
    if not norms:
        raise UnsupportedArchitectureError(f"{type(layer).__name__}: no norm found in the decoder layer")
    kind = _norm_kind(norms[0][1])
    bias = kind == "layer" and norms[0][1].bias is not None
    mc = model.config
    if len(norms) == 1 or getattr(mc, "use_parallel_residual", False) or getattr(mc, "parallel_attn", False):
        layout = "parallel"
    elif len(norms) == 4:
        layout = "sandwich"
    elif all(n.startswith("post") for n, _ in norms):
        layout = "post"
    else:
        layout = "pre"
    _, attn = _child(layer, "attention")
    _, mlp = _child(layer, "mlp")
    names = _attention_names(attn, model)
    qk_norm, qk_kind = _qk_norm(attn, model)
    # the config object's value: the class default where config.json leaves it out (GPT-BigCode's
    # activation_function defaults to gelu_pytorch_tanh)
    act = str(_first({f: getattr(mc, f, None) for f in _ACT_FIELDS}, _ACT_FIELDS, "silu"))
    if act not in SINGLE_OP_ACTIVATIONS and act != "gelu_new":
        raise UnsupportedArchitectureError(f"{mc.model_type}: activation '{act}' has no program")
    head_dim = (getattr(attn, "head_dim", None) or getattr(attn, "head_size", None)
                or mc.hidden_size // mc.num_attention_heads)
    rot = getattr(attn, "rotary_ndims", None)
    rope = getattr(mc, "rope_parameters", None) or {}
    factor = rot / head_dim if rot else float(rope.get("partial_rotary_factor", 1.0))
    if not any("rotary" in type(m).__name__.lower() for m in model.modules()):
        factor = 0.0  # learned absolute positions (GPT-BigCode `wpe`): no rotary in the attention
    return Traits(
        norm=kind, norm_bias=bias, layout=layout, parallel_norms=len(norms) if layout == "parallel" else 1,
        qk_norm=qk_norm, qk_norm_kind=qk_kind, activation=act, rotary_factor=factor,
        resid_dropout=float(_first(cfg, _DROPOUT_FIELDS, 0.0) or 0.0), layers_path=path, native=False,
        residual_multiplier=hasattr(layer, "residual_multiplier"), logit_scale=_scales_logits(model),
        rotary_tables=_rotary_tables(model), rotary_fp32=_rotary_fp32(attn),
        attention_dropout=float(_first({f: getattr(mc, f, None) for f in _ATTN_DROPOUT_FIELDS},
                                       _ATTN_DROPOUT_FIELDS, 0.0) or 0.0),
        **names, **_mlp_names(mlp),
    )


def _rotary_fp32(attn) -> bool:
    """The modeling file's `apply_rotary_pos_emb` upcasts q and k (`q.float()`: Cohere), read from its source."""
    import inspect
    import sys

    fn = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    try:
        return fn is not None and "q.float()" in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


def _rotary_tables(model) -> int:
    """The rotary tables a forward computes: one `inv_freq` buffer per table (Gemma 3 keeps one per layer type,
    `sliding_attention_inv_freq` and `full_attention_inv_freq`, in one module), at least 1."""
    names = [n for n, _ in model.named_buffers() if n.endswith("inv_freq") and not n.endswith("original_inv_freq")]
    return max(1, len(names))


def _scales_logits(model) -> bool:
    """The CausalLM multiplies or divides its logits by a config scalar: Granite `logits_scaling`, Cohere
    `logit_scale` (read from the class's forward source: the module holds no trace of it)."""
    import inspect

    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False
    return "logits_scaling" in source or "logit_scale" in source


def _attention_names(attn, model) -> dict[str, Any]:
    import torch

    lin = _linears(attn)
    mc = model.config
    sub = sorted({type(m).__name__ for _, m in attn.named_children()
                  if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear})
    if not lin and sub:  # Falcon's FalconLinear: `input @ weight.T`, and no nn.Linear to bitsandbytes
        raise UnsupportedArchitectureError(
            f"{mc.model_type}: {type(attn).__name__}'s projections are {', '.join(sub)}, a subclass of nn.Linear "
            "that transformers' bitsandbytes integration leaves unquantized (`type(module) is nn.Linear`) and whose "
            "attention layout has no program yet")
    if len(lin) == 2:  # the fused projection is the wider one (Phi-3 defines o_proj first)
        qkv, o = sorted(lin, key=lambda nm: -nm[1].out_features)
        return {"fused_qkv": True, "qkv": qkv[0], "o": o[0]}
    if len(lin) == 4:
        return {"q": lin[0][0], "k": lin[1][0], "v": lin[2][0], "o": lin[3][0]}
    raise UnsupportedArchitectureError(
        f"{mc.model_type}: {type(attn).__name__} has {len(lin)} linears (expected q, k, v, o or qkv, o)")


def _qk_norm(attn, model) -> tuple[str, str]:

    norms = [m for _, m in attn.named_children() if _is_norm(m)]
    if not norms:
        return "none", "rms"
    mc = model.config
    head_dim = getattr(attn, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    width = norms[0].weight.shape[-1]
    kind = _norm_kind(norms[0])
    return ("head" if width == head_dim else "proj"), kind


def _mlp_names(mlp) -> dict[str, Any]:
    lin = _linears(mlp)
    if len(lin) == 3:
        return {"gated_mlp": True, "gate": lin[0][0], "up": lin[1][0], "down": lin[2][0]}
    if len(lin) == 2:  # the down projection is the one whose input is the other's output (or half of it)
        if lin[0][1].in_features in (lin[1][1].out_features, 2 * lin[1][1].out_features) and \
                lin[1][1].in_features not in (lin[0][1].out_features, lin[0][1].out_features // 2):
            lin = lin[::-1]
        first, second = lin[0][1], lin[1][1]
        if first.out_features == 2 * second.in_features:
            return {"gated_mlp": True, "fused_gate_up": True, "gate_up": lin[0][0], "down": lin[1][0]}
        return {"gated_mlp": False, "up": lin[0][0], "down": lin[1][0]}
    raise UnsupportedArchitectureError(f"{type(mlp).__name__} has {len(lin)} linears (expected 2 or 3)")
