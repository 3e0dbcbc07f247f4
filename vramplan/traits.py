"""Architecture traits: one frozen record per `model_type`, read by the estimator instead of testing names.

A decoder layer of every causal LM transformers ships is a few choices over the same parts. `Traits` names
them; the layer program (`estimator/blocks.py`, `estimator/programs.py`) replays what they imply:

- norm: `RMSNorm` (Llama: fp32 math, weight * x) or `nn.LayerNorm` (`native_layer_norm`: one op that saves its
  input, mean and rstd), with or without bias; Gemma's `(1 + weight)` RMSNorm.
- where the norms sit: `pre` (Llama: input_layernorm, post_attention_layernorm before attention and MLP),
  `post` (OLMo-2: post_attention_layernorm / post_feedforward_layernorm on the branch outputs, no pre-norm),
  `sandwich` (Gemma 2/3: both), `parallel` (GPT-NeoX `use_parallel_residual`, Phi-2, Falcon, Cohere: attention
  and MLP read the same input, their outputs are summed with the residual).
- q/k norm: none, per head (Qwen3, Gemma 3: `head_dim` wide) or over the whole projection (OLMo-2:
  `num_heads * head_dim` wide, before the head view).
- fused projections: one `qkv` linear (Phi-3 `qkv_proj`, GPT-NeoX `query_key_value`), a fused `gate_up_proj`.
- MLP: gated (act(gate) * up) or plain (fc1 -> act -> fc2), and the activation as transformers' ACT2FN runs it
  (one op for silu/gelu/gelu_pytorch_tanh/relu; `gelu_new` is a Python formula of eight ops).
- partial rotary (`partial_rotary_factor`: slice, rotate, `torch.cat` back), residual dropout sites.
- the leaf names of the linears (LoRA targets) and the decoder layers' path (`model.layers`, `transformer.h`).

Native architectures get hand-written records here; others are derived from the module tree built on the
meta device (`measure/meta_traits.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

# "layer_fp32": a LayerNorm written as fp32 tensor ops, no bias (Cohere's CohereLayerNorm)
NormKind = Literal["rms", "layer", "layer_fp32"]
Layout = Literal["pre", "post", "sandwich", "parallel"]
QKNorm = Literal["none", "head", "proj"]
# ACT2FN activations that are one autograd op saving their input (silu, gelu, gelu_pytorch_tanh, relu, ...)
SINGLE_OP_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu", "gelu_fast", "quick_gelu")


class MoELayout(NamedTuple):
    """Where a sparse MoE block's sizes live in the config, and how it routes (read by `estimator/context.py`).
    A NamedTuple, not a dataclass: made at every import, where a dataclass's generated methods cost ~0.6 ms.

    The inventory decides which layers are sparse (`inventory._is_moe_layer`: Qwen's `decoder_sparse_step` and
    `mlp_only_layers`); the layer replay assumes every layer is, as in every released config."""

    experts_key: str  # the expert count: Mixtral `num_local_experts`, Qwen `num_experts`
    inter_key: str  # one expert's intermediate size: Mixtral `intermediate_size`, Qwen `moe_intermediate_size`
    shared_inter_key: str = ""  # Qwen2-MoE's shared expert (`shared_expert_intermediate_size`)
    fp32_routing_weights: bool = False  # Mixtral keeps the top-k routing weights fp32; Qwen casts them back
    # each expert's (gate, up, down) nn.Linear names under transformers 4.x, which transformers 5 fused into 3-D
    # `experts.gate_up_proj` / `experts.down_proj` (peft maps targets naming them: weights.expert_lora_targets)
    v4_linears: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    # transformers 4.x: the same names in the order the expert module defines them (`named_parameters()`), and the
    # decoder layer's attribute holding the sparse block (4.57 Mixtral `block_sparse_moe`, Qwen-MoE `mlp`)
    v4_order: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    v4_block: str = "mlp"
    # the config flag that renormalises the top-k routing weights (Qwen `norm_topk_prob`, default False); "" always
    norm_topk_key: str = "norm_topk_prob"


MIXTRAL_MOE = MoELayout("num_local_experts", "intermediate_size", fp32_routing_weights=True,
                        v4_linears=("w1", "w3", "w2"), v4_order=("w1", "w2", "w3"), v4_block="block_sparse_moe",
                        norm_topk_key="")
QWEN_MOE = MoELayout("num_experts", "moe_intermediate_size", "shared_expert_intermediate_size")


@dataclass(frozen=True)
class Traits:
    """What a decoder layer is made of. Hashable: the layer cost cache keys on it."""

    norm: NormKind = "rms"
    norm_bias: bool = False  # LayerNorm with a bias (trainable in full fine-tuning)
    gemma_norm: bool = False  # GemmaRMSNorm: fp32 math, x * (1 + weight), `.type_as(x)`
    layout: Layout = "pre"
    parallel_norms: int = 1  # parallel layout: one shared norm (Phi-2, Cohere) or one per branch (GPT-NeoX)
    qk_norm: QKNorm = "none"
    qk_norm_kind: NormKind = "rms"
    fused_qkv: bool = False
    gated_mlp: bool = True
    fused_gate_up: bool = False
    activation: str = "silu"
    rotary_factor: float = 1.0  # partial_rotary_factor (1.0: the whole head)
    resid_dropout: float = 0.0  # dropout on the attention and MLP outputs (StarCoder2, Phi-2, GPT-NeoX)
    # dropout on the attention probabilities (config `attention_dropout` / GPT-BigCode `attn_pdrop`, the config
    # class's default where config.json is silent); native records read the config (estimator/context.py)
    attention_dropout: float = 0.0
    rotary_fp32: bool = False  # Cohere: q/k rotated in fp32 (`q.float()`), interleaved halves, cast back
    rotary_tables: int = 1  # rotary tables a forward computes (Gemma 3: one for sliding and one for full layers)
    residual_multiplier: bool = False  # Granite: `residual + branch * residual_multiplier` (a product per branch)
    logit_scale: bool = False  # Granite `logits / logits_scaling`, Cohere `logits * logit_scale`: one more [T, V]
    # leaf module names of the linears, in call order
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str = "qkv_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    gate_up: str = "gate_up_proj"
    down: str = "down_proj"
    layers_path: str = "model.layers"
    native: bool = True
    moe: MoELayout | None = None  # sparse MoE blocks (None: a dense MLP)
    sdpa: bool = True  # the class has an sdpa path (`_supports_sdpa`; Gemma 2: False, sdpa cannot softcap)
    sliding_window_every_layer: bool = False  # every layer attends within `sliding_window` (Mistral, Phi-3)
    # model-level masks eager attention builds when the config has no `layer_types` (Gemma 2/3: sliding + full)
    attention_mask_kinds: int = 1
    # library tables keyed by model_type, filled in from PEFT_DEFAULT_TARGETS and LIGER_KERNELS below
    peft_default_targets: tuple[str, ...] = ()  # peft's default LoRA targets (empty: none, the q/v fallback)
    liger_kernels: tuple[str, ...] = ()  # what Liger's apply_liger_kernel_to_<type> patches (sorted)

    @property
    def attention_names(self) -> tuple[str, ...]:
        return (self.qkv, self.o) if self.fused_qkv else (self.q, self.k, self.v, self.o)

    @property
    def mlp_names(self) -> tuple[str, ...]:
        if not self.gated_mlp:
            return (self.up, self.down)
        return (self.gate_up, self.down) if self.fused_gate_up else (self.gate, self.up, self.down)


# peft utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (0.21), for the native families.
# Where peft has no default (phi3, MoE families), vramplan targets the same query/value projections.
PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    # architectures read on the meta device (peft 0.21's entries; none for olmo2, starcoder2, granite, cohere)
    "gpt_neox": ("query_key_value",),
    "falcon": ("query_key_value",),
    "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "stablelm": ("q_proj", "v_proj"),
    "gpt_bigcode": ("c_attn",),
}

# liger_kernel/transformers/monkey_patch.py: the `apply_liger_kernel_to_<type>` defaults of the model types
# vramplan has presets or traits for ("flce": fused_linear_cross_entropy; "rms_norm_copy": the norms are patched
# with in_place=False). Checked against the installed package by tests/test_liger.py.
_DENSE = frozenset({"rope", "rms_norm", "swiglu", "flce"})
LIGER_KERNELS: dict[str, frozenset[str]] = {
    "llama": _DENSE, "mistral": _DENSE, "mixtral": _DENSE, "qwen2": _DENSE, "qwen3": _DENSE,
    "qwen3_moe": _DENSE, "phi3": _DENSE, "olmo2": _DENSE | {"rms_norm_copy"},
    "gemma": frozenset({"rope", "rms_norm", "geglu", "flce"}),
    "gemma2": frozenset({"rope", "rms_norm", "rms_norm_copy", "geglu", "flce"}),
    "gemma3_text": frozenset({"rope", "rms_norm", "rms_norm_copy", "geglu", "flce"}),
    "granite": frozenset({"rope", "rms_norm", "swiglu", "cross_entropy"}),
}


_LLAMA = Traits()
_GEMMA = Traits(gemma_norm=True, activation="gelu_pytorch_tanh")
NATIVE_TRAITS: dict[str, Traits] = {  # as written: native_traits fills in peft's and Liger's tables
    "llama": _LLAMA,
    "mistral": Traits(sliding_window_every_layer=True),
    "mixtral": Traits(sliding_window_every_layer=True, moe=MIXTRAL_MOE),
    "qwen2": _LLAMA,
    "qwen2_moe": Traits(moe=QWEN_MOE),
    "qwen3": Traits(qk_norm="head"),
    "qwen3_moe": Traits(qk_norm="head", moe=QWEN_MOE),
    "gemma": _GEMMA,
    "gemma2": Traits(gemma_norm=True, layout="sandwich", activation="gelu_pytorch_tanh", sdpa=False,
                     attention_mask_kinds=2),
    "gemma3_text": Traits(gemma_norm=True, layout="sandwich", qk_norm="head", activation="gelu_pytorch_tanh",
                          rotary_tables=2,
                          attention_mask_kinds=2),
    "phi3": Traits(fused_qkv=True, fused_gate_up=True, sliding_window_every_layer=True),
}


def with_library_tables(model_type: str, traits: Traits) -> Traits:
    """The record with the libraries' own per-model_type tables filled in (peft's default targets, Liger's
    kernels): the one place an architecture's name selects a fact."""
    return replace(traits, peft_default_targets=PEFT_DEFAULT_TARGETS.get(model_type, ()),
                   liger_kernels=tuple(sorted(LIGER_KERNELS.get(model_type, ()))))


_FILLED: dict[str, Traits] = {}  # model_type -> its record with the library tables, filled at first use


def native_traits(model_type: str, config: Mapping[str, Any] | None = None) -> Traits | None:
    """The hand-written record of a native architecture with the library tables filled in (None for others).
    Filled when first asked for, not at import: an estimate needs one architecture's record."""
    known = _FILLED.get(model_type)
    if known is None:
        written = NATIVE_TRAITS.get(model_type)
        if written is None:
            return None
        known = _FILLED[model_type] = with_library_tables(model_type, written)
    return known
