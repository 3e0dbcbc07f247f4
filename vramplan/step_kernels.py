"""The kernels one micro-batch of a plan launches, timed on a GPU's rates (`vramplan.kernels`).

One micro-batch of T = batch x seq tokens runs on one stream: kernels follow one another, so its GPU time is the
sum of theirs. Counted from the libraries' code:

* Matmuls, per decoder linear (the inventory's groups; M = T, K/N = in/out features), lm_head and MoE experts
  (each expert's GEMM has M = T x top_k / experts): forward y = x W^T, backward dX = dY W and, when W is
  trained (full fine-tuning), dW = dY^T X (autograd's `mm` backward); each a roofline of its own shape
  (`kernels.gemm_s`). Gradient checkpointing reruns every decoder layer's forward (transformers
  `GradientCheckpointingLayer`); lm_head and the loss are outside it.
* LoRA (peft `lora.Linear.forward`): `x = self._cast_input_dtype(x, lora_A.weight.dtype)`, dropout (if any),
  `lora_A`, `lora_B`, `* scaling`, `result + ...`, `result.to(torch_result_dtype)`, per targeted linear. peft
  keeps A/B in fp32 (`autocast_adapter_dtype=True`), so without autocast they are fp32 GEMMs at the fp32 rate
  (TF32 is off by default in torch); under autocast they run in 16-bit. Rank-r GEMMs are memory-bound.
* QLoRA: bitsandbytes `Linear4bit.forward` casts x to the compute dtype and its output back to x's dtype
  (`.to(inp_dtype)`); `MatMul4Bit` dequantizes each 4-bit weight to a 16-bit copy (`dequantize_4bit`) in the
  forward, in the backward (for dX) and in the recompute: 0.5 byte + absmax read, 2 bytes written per weight.
  After peft's kbit upcast (fp32 embeddings and norms) x is fp32, so every activation of the layer is fp32:
  norms, rotary, the MLP's act x up, and, without autocast, attention (sdpa's memory-efficient backend at the
  fp32 rate) and lm_head (an fp32 GEMM). Under autocast (HF Trainer `bf16=True`) sdpa and lm_head run in 16-bit.
* Attention: sdpa's FLASH backend / flash_attention_2 (causal tiles skipped, backward recomputes the scores), the
  memory-efficient backend where FLASH cannot run (pre-sm80, fp32), or eager (full square, score matrix streamed
  through HBM by every elementwise op; `kernels.eager_attention_s`).
* Elementwise, bandwidth-bound, from transformers' modeling code: `LlamaRMSNorm` (to fp32, pow, mean, rsqrt-mul,
  cast back, weight mul) or nn.LayerNorm (one kernel), per-head q/k norms, the residual adds, rotary embeddings
  on q and k (`apply_rotary_pos_emb`), the MLP's act(gate) x up or act(fc); which of them a model has is read
  from its parameter inventory (`layer_traits`). Backward moves about twice the forward's bytes (each op's
  backward reads its saved input(s) and the incoming gradient and writes one).
* Loss (transformers `ForCausalLMLoss`): logits.float(), log_softmax, nll and their backwards over T x vocab.
* CPU dispatch: eager PyTorch launches ~`OPS_PER_LAYER` ops per decoder layer and pass (more per LoRA adapter and
  4-bit linear); the micro-batch takes the longer of the GPU's kernels and the CPU's launches (they overlap).
* Once per step, bandwidth-bound: gradient clipping (HF Trainer `max_grad_norm=1.0`: a foreach norm, then a
  foreach mul) and the optimizer update (`optimizer_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.kernels import (
    Rates,
    eager_attention_s,
    flash_attention_s,
    linear_s,
    stream_s,
)
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES

# aten ops one HF decoder layer launches per pass (LlamaDecoderLayer forward: 2 norms x 7, 7 projections, ~12
# rotary, sdpa + reshapes ~5, 2 residual adds, act and mul; the backward's autograd nodes ~1.5x that), per LoRA
# adapter (cast, dropout, A, B, mul, add, cast back) and per 4-bit linear (casts, dequantize_4bit); rounded.
OPS_PER_LAYER = {"forward": 45, "backward": 70}
OPS_PER_ADAPTER = {"forward": 7, "backward": 10}
OPS_PER_4BIT_LINEAR = {"forward": 3, "backward": 3}
# Bytes moved per trainable parameter by one update, as a function of the parameter's width p (torch
# `_multi_tensor_adamw`: weight decay mul_ 2p, lerp_ 3p, mul_ 2p, addcmul_(v, g, g) 4p, sqrt 2p, div_ 2p, add_ 2p,
# addcdiv_ 4p, measured op by op in tests/test_speed.py; `_multi_tensor_sgd`: add_ 3p, with momentum mul_ + 2 add_;
# `_fused_adamw`: one pass reading p, grad, m, v and writing p, m, v; bitsandbytes 8-bit blockwise: p and grad
# read, p written, 1-byte states read and written; 32-bit paged: fp32 states).
OPTIMIZER_BYTES = {
    "adamw": lambda p: 21 * p, "adamw_fused": lambda p: 7 * p, "adamw_8bit": lambda p: 3 * p + 4,
    "paged_adamw_8bit": lambda p: 3 * p + 4, "paged_adamw_32bit": lambda p: 3 * p + 16,
    "adafactor": lambda p: 12 * p, "sgd": lambda p: 3 * p, "sgd_momentum": lambda p: 8 * p,
    "lion_8bit": lambda p: 3 * p + 2,
}
CLIP_BYTES_PER_GRAD_BYTE = 3  # clip_grad_norm_: foreach norm reads the grads, foreach mul_ reads and writes them


@dataclass(frozen=True)
class Dtypes:
    """Element sizes along one micro-batch (bytes)."""

    compute: int  # GEMM inputs: the autocast dtype, else the compute / weight dtype
    layer: int  # activations between a layer's kernels (fp32 after QLoRA's kbit upcast: Linear4bit casts back)
    stream: int  # the residual stream (estimator.context.stream_bytes)
    norm_weight: int  # norm weights (fp32 after the kbit upcast)
    attention: int  # q/k/v as sdpa sees them (autocast casts them to 16-bit)
    head_fp32: bool  # lm_head runs as an fp32 GEMM (fp32 weight, no autocast)
    adapter: int  # LoRA GEMMs' dtype
    fp32_matmuls: bool  # fp32 weights without autocast: every GEMM at the fp32 rate


def dtypes(plan: TrainingPlan, autocast: bool | None = None) -> Dtypes:
    """The plan's dtypes; `autocast` overrides whether the forward runs under torch.autocast (default: only with
    `mixed_precision`, as the micro-trainer does; HF Trainer's `bf16=True` turns it on for 16-bit bases too)."""
    from vramplan.estimator.context import stream_bytes
    from vramplan.estimator.trainers import adapter_bytes
    from vramplan.estimator.weights import non_quantized_dtype_bytes

    on = plan.mixed_precision is not None if autocast is None else autocast
    compute, stream, nq = DTYPE_BYTES[plan.activation_dtype], stream_bytes(plan), non_quantized_dtype_bytes(plan)
    layer = stream if plan.method == "qlora" else compute
    fp32 = fp32_matmuls(plan)
    return Dtypes(compute=compute, layer=layer, stream=stream, norm_weight=nq,
                  attention=compute if on else layer, head_fp32=fp32 or (nq == 4 and not on),
                  adapter=compute if on else adapter_bytes(plan), fp32_matmuls=fp32)


def fp32_matmuls(plan: TrainingPlan) -> bool:
    return plan.param_dtype == "fp32" and not plan.mixed_precision


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch's seconds per kind of kernel, and the CPU's launch time."""

    matmul: float  # GEMMs: decoder linears, experts, lm_head, LoRA adapters
    dequant: float  # bitsandbytes 4-bit dequantization
    attention: float  # the attention core
    elementwise: float  # norms, residuals, rotary, activations, casts, LoRA glue, the loss
    cpu: float  # launching every op from Python

    @property
    def gpu(self) -> float:
        return self.matmul + self.dequant + self.attention + self.elementwise

    @property
    def total(self) -> float:
        return max(self.gpu, self.cpu)


def _targets(model: ModelSpec, plan: TrainingPlan) -> tuple[str, ...]:
    from vramplan.estimator.weights import resolve_targets

    return resolve_targets(model, plan) if plan.uses_lora else ()


def _decoder_gemms(model: ModelSpec, plan: TrainingPlan, d: Dtypes, r: Rates, tokens: int) -> tuple[float, float]:
    """(forward, backward) seconds of the decoder layers' base linears and experts."""
    full = plan.method == "full"
    fwd = bwd = 0.0
    for g in model.inventory.linear_groups.values():
        f, b = linear_s(tokens, g.in_features // g.count, g.out_features // g.count, r, weight_grad=full,
                        elem_bytes=d.compute, fp32=d.fp32_matmuls)
        fwd, bwd = fwd + g.count * f, bwd + g.count * b
    experts = model.inventory.numel_by_role["experts"]
    if experts and model.num_experts:
        inter = experts // (model.num_layers * model.num_experts * 3) // model.hidden_size  # gate, up, down
        rows = max(1, tokens * model.experts_per_token // model.num_experts)
        f1, b1 = linear_s(rows, model.hidden_size, inter, r, full, elem_bytes=d.compute, fp32=d.fp32_matmuls)
        f2, b2 = linear_s(rows, inter, model.hidden_size, r, full, elem_bytes=d.compute, fp32=d.fp32_matmuls)
        n = model.num_layers * model.num_experts
        fwd, bwd = fwd + n * (2 * f1 + f2), bwd + n * (2 * b1 + b2)
    return fwd, bwd


def _dequant_pass_s(model: ModelSpec, plan: TrainingPlan, r: Rates) -> float:
    """One dequantization of every 4-bit weight: 0.5 byte packed + absmax (uint8 per block with double quant, else
    fp32 per block) read, 2 bytes written."""
    if plan.method != "qlora":
        return 0.0
    absmax = (1.0 if plan.double_quant else 4.0) / plan.quant_blocksize
    return model.inventory.numel_by_role["linear"] * (0.5 + absmax + 2.0) / r.dequant_bytes_per_s


def _casts_4bit_bytes(model: ModelSpec, plan: TrainingPlan, d: Dtypes) -> int:
    """Bytes per token of Linear4bit's input cast to the compute dtype and output cast back, per forward."""
    if plan.method != "qlora" or d.layer == d.compute:
        return 0
    groups = model.inventory.linear_groups.values()
    return (d.layer + d.compute) * sum(g.in_features + g.out_features for g in groups) // model.num_layers


def _lora_s(model: ModelSpec, plan: TrainingPlan, d: Dtypes, r: Rates, tokens: int) -> tuple[float, ...]:
    """(GEMM forward, GEMM backward, elementwise forward, elementwise backward) seconds of the adapters."""
    rank, w, fp32 = plan.rank or 8, d.adapter, d.adapter == 4 and d.compute != 4
    groups = model.inventory.linear_groups
    gf = gb = ef = eb = 0.0
    # (`--transformers 4` experts and router: nn.Linears named in the targets that the fused inventory lacks; their
    # adapters are not timed, as transformers 5's ParamWrapper experts are not)
    for name in (n for n in _targets(model, plan) if n in groups):
        g = groups[name]
        n_in, n_out = g.in_features // g.count, g.out_features // g.count
        fa, ba = linear_s(tokens, n_in, rank, r, weight_grad=True, elem_bytes=w, fp32=fp32)
        fb, bb = linear_s(tokens, rank, n_out, r, weight_grad=True, elem_bytes=w, fp32=fp32)
        gf, gb = gf + g.count * (fa + fb), gb + g.count * (ba + bb)
        cast_in = (d.layer + w) * n_in if w != d.layer else 0  # x.to(lora_A.weight.dtype)
        dropout = (2 * w + 1) * n_in if plan.lora_dropout > 0 else 0  # read, write, bool mask
        out = d.compute if plan.method != "qlora" else d.layer  # the base layer's output dtype
        m = max(w, out)  # `result + lora_out` promotes; `.to(torch_result_dtype)` casts back when it did
        glue = (2 * w + (out + w + m) + (m + out if m != out else 0)) * n_out  # * scaling, + result, cast back
        accumulate = 3 * d.layer * n_in  # dX of the adapter path added to the base path's
        ef += g.count * stream_s(tokens * (cast_in + dropout + glue), r)
        eb += g.count * stream_s(tokens * (cast_in + dropout + glue + accumulate), r)
    return gf, gb, ef, eb


@dataclass(frozen=True)
class LayerTraits:
    """What a decoder layer's elementwise kernels are, read from the model's parameter inventory (layer 0)."""

    hidden_norms: int  # norms over the hidden size (2; Gemma-2/3: 4, sandwich norms)
    head_norms: bool  # per-head RMSNorm on q and k (Qwen3, Gemma-3)
    fused_norm: bool  # nn.LayerNorm (weight and bias): one aten kernel; else transformers' Python RMSNorm
    gated_mlp: bool  # act(gate) * up (SwiGLU/GeGLU); else act(fc) (GELU MLP)
    rotary: bool  # rotary embeddings on q and k; else learned positions (a second embedding table)


def layer_traits(model: ModelSpec) -> LayerTraits:
    tensors = [t for t in model.inventory.tensors if t.layer == 0]
    norms = [t for t in tensors if t.role == "norm"]
    biased = {t.module for t in tensors if t.role == "bias"}
    groups = model.inventory.linear_groups
    embeddings = [t for t in model.inventory.tensors if t.role == "embedding"]
    return LayerTraits(
        hidden_norms=sum(t.numel == model.hidden_size for t in norms),
        head_norms=any(t.numel == model.head_dim for t in norms),
        fused_norm=any(t.module in biased for t in norms),
        gated_mlp=bool(model.num_experts) or any(n in groups for n in ("gate_proj", "gate_up_proj")),
        rotary=len(embeddings) == 1,
    )


def _norm_bytes(d: Dtypes, fused: bool) -> int:
    """Bytes per normalised element, forward: `LlamaRMSNorm` runs to(fp32), pow, mean, mul by rsqrt, to(input
    dtype), weight * x (promoting to the weight's dtype); nn.LayerNorm is one kernel reading x, writing y."""
    a, res = d.layer, d.stream
    if fused:
        return res + a
    return (res + 4) + 8 + 4 + 8 + (4 + a) + (a + max(a, d.norm_weight))


def _layer_stream_bytes(model: ModelSpec, plan: TrainingPlan, d: Dtypes) -> int:
    """Bytes one decoder layer's elementwise kernels move per token, forward (see the module docstring)."""
    a, res, traits = d.layer, d.stream, layer_traits(model)
    q_width, kv_width = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    norms = traits.hidden_norms * _norm_bytes(d, traits.fused_norm) * model.hidden_size
    norms += _norm_bytes(d, False) * (q_width + kv_width) if traits.head_norms else 0
    residual = 2 * (res + a + res) * model.hidden_size  # hidden = residual + sublayer output, twice
    rotary = 12 * a * (q_width + kv_width) if traits.rotary else 0  # q*cos, rotate_half (slice, neg, cat), *sin, add
    reshape = 2 * d.attention * q_width  # the attention output made contiguous for o_proj
    sdpa_casts = (a + d.attention) * (q_width + 2 * kv_width) if d.attention != a else 0  # autocast on q, k, v
    mlp = (5 if traits.gated_mlp else 2) * a * model.intermediate_size  # act(gate) * up: 2 + 3; act(fc): 2
    return norms + residual + rotary + reshape + sdpa_casts + mlp + _casts_4bit_bytes(model, plan, d)


def _attention_s(model: ModelSpec, plan: TrainingPlan, d: Dtypes, r: Rates) -> tuple[float, float]:
    """(forward, backward) seconds of all layers' attention cores; fp32 q/k/v run at the fp32 rate."""
    if plan.attn == "eager":
        f, b = eager_attention_s(plan.batch, plan.seq, model.num_heads, model.head_dim, r, d.attention)
    else:
        f, b = flash_attention_s(plan.batch, plan.seq, model.num_heads, model.head_dim, r, d.attention == 4)
    return model.num_layers * f, model.num_layers * b


def _ops(model: ModelSpec, plan: TrainingPlan, phase: str) -> int:
    linears = len(model.inventory.linear_groups) if plan.method == "qlora" else 0
    per_layer = OPS_PER_LAYER[phase] + len(_targets(model, plan)) * OPS_PER_ADAPTER[phase] \
        + linears * OPS_PER_4BIT_LINEAR[phase]
    return model.num_layers * per_layer


def micro_batch(model: ModelSpec, plan: TrainingPlan, r: Rates, d: Dtypes) -> MicroBatch:
    """Seconds of one micro-batch's forward, backward and recompute, per kind of kernel."""
    tokens, recompute = plan.batch * plan.seq, 1 if plan.grad_ckpt else 0
    fwd, bwd = _decoder_gemms(model, plan, d, r, tokens)
    head_bytes = 4 if d.head_fp32 else d.compute
    head_f, head_b = linear_s(tokens, model.hidden_size, model.vocab_size, r, weight_grad=plan.method == "full",
                              elem_bytes=head_bytes, fp32=d.head_fp32)
    lf, lb, lef, leb = _lora_s(model, plan, d, r, tokens)
    matmul = (fwd + lf) * (1 + recompute) + bwd + lb + head_f + head_b
    dequant = _dequant_pass_s(model, plan, r) * (2 + recompute)  # forward, backward (dX), recompute
    att_f, att_b = _attention_s(model, plan, d, r)
    layer_f = stream_s(tokens * _layer_stream_bytes(model, plan, d) * model.num_layers, r)
    loss = stream_s(tokens * model.vocab_size * (36 + 2 * head_bytes), r)  # logits.float(), log_softmax, nll
    elementwise = (layer_f + lef) * (1 + recompute) + 2 * layer_f + leb + loss
    cpu = (_ops(model, plan, "forward") * (1 + recompute) + _ops(model, plan, "backward")) * r.dispatch_s
    return MicroBatch(matmul, dequant, att_f * (1 + recompute) + att_b, elementwise, cpu)


def optimizer_bytes(model: ModelSpec, plan: TrainingPlan) -> float:
    """Bytes gradient clipping and the update move: bandwidth-bound passes over the trainable parameters. Which
    tensors train and their widths are the memory model's (estimator.weights.static_memory: LoRA A/B in fp32, bf16
    under TRL's SFTTrainer for a quantized model, DoRA magnitudes, modules_to_save copies in the base dtype)."""
    from vramplan.estimator.weights import static_memory

    st = static_memory(model, plan)
    per_param = OPTIMIZER_BYTES.get(plan.optimizer or "adamw", OPTIMIZER_BYTES["adamw"])
    return sum(n * (per_param(p) + CLIP_BYTES_PER_GRAD_BYTE * p) for n, p in zip(st.trainable_numels, st.dtypes))
