"""The forward programs replayed on the tape: norms, linears, attention kernels and the head (final norm, lm_head,
loss). The sparse MoE block is `moe.py`; the decoder layer that puts them together per architecture is `layers.py`.

Each function follows the transformers 5 / peft / bitsandbytes source line by line, keeping only what allocates:
- `LlamaRMSNorm.forward`: x.to(fp32) -> pow(2) -> mean -> +eps -> rsqrt -> mul -> .to(input dtype) -> weight *.
  (`GemmaRMSNorm` computes in fp32 and returns `.type_as(x)`.)
- bitsandbytes `Linear4bit.forward`: x.to(compute_dtype) -> `MatMul4Bit` (saves no activation) -> .to(input dtype).
- bitsandbytes `Linear8bitLt.forward` -> `bnb.matmul` -> `MatMul8bitLt` on CUDA, `MatMul8bitFp` on the CPU
  (autograd/_functions.py): `int8.py`.
- peft `lora.Linear.forward`: result = base(x); x.to(lora_A dtype) -> dropout -> A -> B -> * scaling ->
  result + ... (type promotion) -> .to(result dtype).
- transformers `ForCausalLMLoss`: logits.float() -> cross_entropy (log_softmax saves its fp32 output); the
  final norm's output stays referenced by `outputs` until the CausalLM forward returns.
Derivative formulas (what autograd saves) follow torch's `derivatives.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.estimator.tape import Tape


@dataclass(frozen=True)
class Ctx:
    """Everything a layer program needs, in bytes-per-element and element counts."""

    tokens: int  # batch * seq
    batch: int
    seq: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    norm_w: int  # bytes of norm weights (4 after the kbit upcast)
    linear_w: int  # bytes of 16/32-bit linear weights (0 for 4-bit)
    compute: int  # bnb compute dtype bytes (4-bit linears)
    quantized: bool
    lora: frozenset[str]  # targeted leaf names
    rank: int
    dropout: bool
    full: bool  # every weight trainable
    gemma_norm: bool  # GemmaRMSNorm (fp32 math, output in input dtype)
    attn: str  # sdpa | eager | flash_attention_2
    lm_head_w: int  # bytes of lm_head / embedding weight
    layer_norm: bool = False  # the model's norms are nn.LayerNorm (traits.norm == "layer")
    layer_norm_fp32: bool = False  # ... a LayerNorm in fp32 tensor ops (traits.norm == "layer_fp32": Cohere)
    norm_bias: bool = False  # ... with a bias
    attn_softcap: bool = False  # gemma2: scores / cap -> tanh -> * cap (eager)
    sdpa_mask: bool = False  # sdpa gets an explicit (sliding-window) mask instead of is_causal
    quant_w: int = 2  # bytes per element of a dequantized 4-bit weight (QuantState.dtype: the loading dtype)
    quant_blocksize: int = 64
    double_quant: bool = False
    kernel_dequant: bool = False  # CUDA gemm_4bit takes its dequantize + F.linear path (see linear())
    cuda: bool = True  # False: what the CPU tracer sees (dropout keeps a float mask there)
    autocast: bool = False  # fp32 weights under torch.autocast(compute dtype): mixed precision
    use_cache: bool = False  # no checkpointing: transformers keeps `use_cache` on, a DynamicCache fills up
    # Mixture of experts (0 experts: a dense MLP)
    experts: int = 0
    top_k: int = 0
    moe_inter: int = 0
    shared_inter: int = 0  # qwen2_moe's shared expert
    weights_fp32_scores: bool = True  # Mixtral keeps the routing weights fp32; Qwen casts them to the logits'
    expert_w: int = 2  # bytes of the fused 3-D expert weights (never quantized: fp32 after the kbit upcast)
    expert_lora: tuple[str, ...] = ()  # fused expert parameters peft wraps (ParamWrapper): gate_up_proj, down_proj
    router_lora: bool = False  # the router weight too (peft maps the v4 `gate` linear to `gate.weight`)
    # --transformers 4: each expert its own nn.Linears, run in a loop (moe.moe_v4); their (gate, up, down) names
    experts_v4: tuple[str, ...] = ()
    norm_topk: bool = True  # the top-k routing weights are renormalised (Mixtral; Qwen's `norm_topk_prob`)
    dora: bool = False  # LoraConfig(use_dora=True): dora.py
    dora_bias: frozenset[str] = frozenset()  # DoRA-wrapped linears with a bias
    trainer: str = "hf"  # plan.trainer: which head and loss (losses.py)
    lora_w: int = 4  # bytes of LoRA A/B (fp32: peft autocast_adapter_dtype; bf16 under TRL's SFT for QLoRA)
    loss_type: str | None = None  # plan.loss_type (trl-sft)
    head_trainable: bool = False  # the output head trains without the rest (peft modules_to_save: lm_head)
    logit_scale: bool = False  # the CausalLM scales its logits (Traits.logit_scale: Granite, Cohere)
    attn_dropout: float = 0.0  # dropout on the attention probabilities in training (see attention_core)
    liger: frozenset[str] = frozenset()  # Liger kernels in effect (`use_liger_kernel`: liger.py)
    offload_activations: bool = False  # TRL activation offloading: saved tensors to host (offloading.py)
    # LLM.int8 base (`load_in_8bit`): every decoder linear a `Linear8bitLt` (see `int8_linear`)
    int8: bool = False
    int8_fp16: bool = False  # the activations are fp16 already: MatMul8bitLt's `A.to(float16)` copies nothing
    # non-reentrant checkpointing: MatMul8bitLt keeps its input as a ctx attribute (`ctx.tensors = (CAt, subA,
    # A)`), which checkpoint's saved-tensor hooks never see, so it outlives the checkpointed forward
    int8_ctx_keeps: bool = False


def rmsnorm(tp: Tape, c: Ctx, x: int, a: int, width: int, groups: int = 1) -> tuple[int, int]:
    """Returns (output, output dtype bytes). Drops nothing: the caller owns x. `groups` rows of `width` per token
    (the per-head q/k norms: heads x head_dim). A model whose norms are nn.LayerNorm takes `layernorm`."""
    if c.layer_norm:
        return layernorm(tp, c, x, a, width, groups)
    if c.layer_norm_fp32:
        return layernorm_fp32(tp, c, x, a, width, groups)
    if "rms_norm" in c.liger:
        from vramplan.estimator import liger

        return liger.rmsnorm(tp, c, x, a, width, groups)
    rows = c.tokens * groups
    n = rows * width
    x32 = tp.op(n * 4, (x,)) if a != 4 else tp.op(0, (x,), alias=x)
    sq = tp.op(n * 4, (x32,), saves=(x32,), bwd_temp=n * 4)
    var = tp.op(rows * 4, (sq,))
    tp.drop(sq)
    var_eps = tp.op(rows * 4, (var,))
    tp.drop(var)
    r = tp.op(rows * 4, (var_eps,), saves_out=True)
    tp.drop(var_eps)
    y = tp.op(n * 4, (x32, r), saves=(x32, r), bwd_temp=n * 4)
    tp.drop(x32, r)
    if c.gemma_norm:  # output * (1.0 + weight.float()) then .type_as(x); mul saves the (1 + w) temporary
        w1 = tp.op(width * 4, grad=c.full)
        yw = tp.op(n * 4, (y, w1), saves=(y, w1) if c.full else (w1,),
                   param_grad=width * c.norm_w if c.full else 0)
        tp.drop(y, w1)
        out = tp.op(n * a, (yw,)) if a != 4 else tp.op(0, (yw,), alias=yw)
        tp.drop(yw)
        return out, a
    yc = tp.op(n * a, (y,)) if a != 4 else tp.op(0, (y,), alias=y)
    tp.drop(y)
    out_a = max(a, c.norm_w)
    out = tp.op(n * out_a, (yc,), saves=(yc,) if c.full else (), param_grad=width * c.norm_w if c.full else 0)
    tp.drop(yc)
    return out, out_a


def layernorm(tp: Tape, c: Ctx, x: int, a: int, width: int, groups: int = 1) -> tuple[int, int]:
    """`F.layer_norm` -> `native_layer_norm`, one op: the output in the input dtype; it saves the input, mean and
    rstd ([rows] each: fp32 on CUDA, the input dtype in `layer_norm_cpu` and the meta kernel) and the weights."""
    rows = c.tokens * groups
    stats = tp.op(2 * rows * (4 if c.cuda else a), grad=False)
    grad_w = width * c.norm_w * (2 if c.norm_bias else 1) if c.full else 0
    out = tp.op(rows * width * a, (x, stats), saves=(x, stats), param_grad=grad_w)
    tp.drop(stats)
    return out, a


def layernorm_fp32(tp: Tape, c: Ctx, x: int, a: int, width: int, groups: int = 1) -> tuple[int, int]:
    """`CohereLayerNorm.forward`: x.to(fp32); mean; (x - mean).pow(2).mean(); (x - mean) again * rsqrt(var + eps);
    weight.to(fp32) * ...; .to(input dtype). pow saves its input (the first x - mean), the product saves the second
    x - mean and rsqrt's output; the weight product saves its other operand when the weight trains."""
    rows = c.tokens * groups
    n = rows * width
    x32 = tp.op(n * 4, (x,)) if a != 4 else tp.op(0, (x,), alias=x)
    mean = tp.op(rows * 4, (x32,))
    d1 = tp.op(n * 4, (x32, mean))
    sq = tp.op(n * 4, (d1,), saves=(d1,))
    tp.drop(d1)
    var = tp.op(rows * 4, (sq,))
    tp.drop(sq)
    d2 = tp.op(n * 4, (x32, mean))
    tp.drop(x32, mean)
    ve = tp.op(rows * 4, (var,))
    tp.drop(var)
    r = tp.op(rows * 4, (ve,), saves_out=True)
    tp.drop(ve)
    y = tp.op(n * 4, (d2, r), saves=(d2, r))
    tp.drop(d2, r)
    w32 = tp.op(width * 4 if c.norm_w != 4 else 0, grad=c.full)
    yw = tp.op(n * 4, (y, w32), saves=(y, w32) if c.full else (w32,), param_grad=width * c.norm_w if c.full else 0)
    tp.drop(y, w32)
    out = tp.op(n * a, (yw,)) if a != 4 else tp.op(0, (yw,), alias=yw)
    tp.drop(yw)
    return out, a


def linear(tp: Tape, c: Ctx, x: int, a: int, name: str, n_in: int, n_out: int) -> tuple[int, int]:
    """A decoder linear (16-bit, or 4-bit), with LoRA when targeted. Returns (output, dtype bytes)."""
    t = c.tokens
    if c.int8:
        from vramplan.estimator.int8 import int8_linear  # loaded for an 8-bit base only (import cost)

        res, res_a = int8_linear(tp, c, x, a, n_in, n_out), a
    elif c.quantized:
        xc = tp.op(t * n_in * c.compute, (x,)) if a != c.compute else tp.op(0, (x,), alias=x)
        w = n_out * n_in
        # Nested absmax is dequantized to fp32 (`dequantize_blockwise`, then `+ offset`) for every use.
        absmax32 = -(-w // c.quant_blocksize) * 4 if c.double_quant else 0
        # MatMul4Bit.backward: matmul(grad_output, dequantize_4bit(B).to(grad_output.dtype)); the weight comes
        # out in QuantState.dtype and is cast to the gradient's (compute) dtype when they differ.
        w_cast = w * c.compute if c.quant_w != c.compute else 0
        # Peak of that node: absmax32 + W, then W (+ its cast) + grad_A; the tape adds grad_A itself.
        grad_a = t * n_in * c.compute
        bwd = w * c.quant_w + (max(absmax32, w_cast) if w_cast else max(0, absmax32 - grad_a))
        # CUDA gemm_4bit (backends/cuda/ops.py) with more than 512 rows (1536 for small weights on some
        # arches) runs `_dequant_linear_fallback`: fp32 absmax (x2 when nested) and the whole weight in the
        # compute dtype, then F.linear. Inside a custom op: the CPU tracer does not see it, the allocator does.
        fwd = w * c.compute + 2 * absmax32 if c.kernel_dequant else 0
        y = tp.op(t * n_out * c.compute, (xc,), temp=fwd, bwd_temp=bwd)
        tp.drop(xc)
        res = tp.op(t * n_out * a, (y,)) if a != c.compute else tp.op(0, (y,), alias=y)
        tp.drop(y)
        res_a = a
    elif c.autocast:
        res, res_a = autocast_mm(tp, c, x, a, n_in, n_out, c.full), c.compute
    else:
        grad_w = n_out * n_in * c.linear_w if c.full else 0
        res = tp.op(t * n_out * a, (x,), saves=(x,) if c.full else (), param_grad=grad_w)
        res_a = a
    if name not in c.lora:
        return res, res_a
    lw = c.lora_w  # peft `_cast_input_dtype(x, lora_A.weight.dtype)`
    xa = tp.op(t * n_in * lw, (x,)) if a != lw else tp.op(0, (x,), alias=x)
    # `x = self._cast_input_dtype(x, ...)` rebinds lora.Linear.forward's local: the cast lives until it returns
    cast = xa if a != lw else None
    if cast is not None:
        tp.refs[cast] += 1
    if c.dropout:
        # nn.Dropout on CUDA: native_dropout saves a bool mask. On CPU (`_dropout_impl`) the mask is
        # `empty_like(input).bernoulli_()`, as wide as the input, saved by `input * noise`. The output feeds
        # lora_A, which saves it.
        # Without a gradient to the input (the first layer, frozen below) no node saves the mask.
        mask = tp.op(t * n_in * (1 if c.cuda else lw), grad=False)
        xd = tp.op(t * n_in * lw, (xa, mask), saves=(mask,))
        tp.drop(xa, mask)
        xa = xd
    if c.dora:  # DoraLinearVariant.forward: result + lora_magnitude_vector(x, ...) (dora.py)
        from vramplan.estimator.dora import dora_delta  # loaded for DoRA plans only (import cost)

        delta = dora_delta(tp, c, res, res_a, xa, n_in, n_out, dropped=c.dropout, bias=name in c.dora_bias)
        total = tp.op(t * n_out * max(4, res_a), (res, delta))
        tp.drop(res, delta)
        out = tp.op(t * n_out * res_a, (total,)) if res_a != 4 else tp.op(0, (total,), alias=total)
        tp.drop(total, *([cast] if cast is not None else []))
        return out, res_a
    if c.autocast:  # lora_A / lora_B are nn.Linear: autocast casts their input and (cached) weights
        la = c.compute
        ha = autocast_mm(tp, c, xa, 4, n_in, c.rank, True, weight_bytes=4)
        tp.drop(xa)
        hb = autocast_mm(tp, c, ha, la, c.rank, n_out, True, weight_bytes=4)
        tp.drop(ha)
    else:
        la = lw
        ha = tp.op(t * c.rank * lw, (xa,), saves=(xa,), grad=True, param_grad=c.rank * n_in * lw)
        tp.drop(xa)
        hb = tp.op(t * n_out * lw, (ha,), saves=(ha,), grad=True, param_grad=n_out * c.rank * lw)
        tp.drop(ha)
    scaled = tp.op(t * n_out * la, (hb,))
    tp.drop(hb)
    ta = max(la, res_a)  # result + lora: type promotion
    total = tp.op(t * n_out * ta, (res, scaled))
    tp.drop(res, scaled)
    out = tp.op(t * n_out * res_a, (total,)) if res_a != ta else tp.op(0, (total,), alias=total)
    tp.drop(total, *([cast] if cast is not None else []))
    return out, res_a


def autocast_mm(tp: Tape, c: Ctx, x: int, a: int, n_in: int, n_out: int, trainable: bool,
                weight_bytes: int | None = None) -> int:
    """F.linear under torch.autocast: the input is cast to the autocast dtype (a fresh copy at every call), and
    so is the weight; autocast caches the cast of a leaf that requires grad until the region exits (a trainable
    weight is cast once per forward), a frozen weight is cast at every call. mm saves the cast input when the
    weight needs a gradient and the cast weight when the input does. The weight's gradient comes back in the
    autocast dtype and `ToCopyBackward` makes the fp32 one that `.grad` keeps."""
    t, ac = c.tokens, c.compute
    w = n_out * n_in
    xc = tp.op(t * n_in * ac, (x,)) if a != ac else tp.op(0, (x,), alias=x)
    if trainable:
        wc = tp.op(w * ac, grad=True, param_grad=w * (weight_bytes or c.linear_w))
        tp.cached.append(wc)
        tp.refs[wc] += 1
    else:
        wc = tp.op(w * ac, grad=False)
    saves = ((xc,) if trainable else ()) + ((wc,) if tp.grad[xc] else ())
    out = tp.op(t * n_out * ac, (xc, wc), saves=saves)
    tp.drop(xc, wc)
    return out


def attention_core(tp: Tape, c: Ctx, q: int, k: int, v: int, a: int) -> int:
    """sdpa / flash: saves q, k, v, the output and an fp32 logsumexp per (batch, head, position).

    The flash, memory-efficient and CPU-flash kernels all take `out` and `logsumexp` back in their backward
    (`_scaled_dot_product_flash_attention_backward(grad_out, q, k, v, out, logsumexp, ...)`), so autograd saves
    the output too.
    """
    if c.attn == "eager":
        return _eager(tp, c, q, k, v, a)
    out_bytes = c.tokens * c.heads * c.head_dim * a
    # sdpa's flash / memory-efficient CUDA kernels with dropout_p > 0 keep the philox seed and offset (two int64)
    # for backward, not a mask. The CPU tracer's sdpa with dropout runs the math path instead: not replayed.
    lse = c.batch * c.heads * c.seq * 4 + (16 if c.attn_dropout > 0 and c.attn != "flash_attention_2" else 0)
    if c.attn == "flash_attention_2":  # FlashAttnFunc: the same saves plus a 16-byte rng_state; its own backward
        return tp.op(out_bytes + lse + 16, (q, k, v), saves=(q, k, v), saves_out=True,
                     bwd_temp=flash_attn_backward_bytes(c.batch, c.seq, c.heads, c.kv_heads, c.head_dim, a))
    if not c.sdpa_mask:
        return tp.op(out_bytes + lse, (q, k, v), saves=(q, k, v), saves_out=True, bwd_temp=lse)
    # With a mask, transformers cannot use sdpa's enable_gqa (`use_gqa_in_sdpa` needs mask None): k and v go
    # through `repeat_kv` copies. sdpa turns the bool mask into a float one in q's dtype
    # (`convert_boolean_attn_mask`: where(mask, 0, -inf), [batch, 1, S, S]) and saves it for backward.
    rep = c.heads > c.kv_heads
    kr = tp.op(out_bytes, (k,)) if rep else tp.op(0, (k,), alias=k)
    vr = tp.op(out_bytes, (v,)) if rep else tp.op(0, (v,), alias=v)
    m = tp.op(c.batch * c.seq * c.seq * a, grad=False)
    out = tp.op(out_bytes + lse, (q, kr, vr), saves=(q, kr, vr, m), saves_out=True, bwd_temp=lse)
    tp.drop(kr, vr, m)
    return out


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def flash_attn_backward_bytes(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, a: int) -> int:
    """What flash-attn 2's `mha_bwd` (csrc/flash_attn/flash_api.cpp) allocates beside dq/dk/dv: `softmax_d`
    [b, h, round128(s)] fp32, `dq_accum` [b, round128(s), h, round(d, 32 if d <= 128 else 64)] fp32 (not
    deterministic), and for GQA/MQA `dk_expanded` / `dv_expanded` [b, s, h, d] in q's dtype, summed into dk/dv.
    Forward (`FlashAttnFunc.forward`): saves q, k, v, out (head dims padded to a multiple of 8 first), the fp32
    softmax_lse [b, h, s] and a 2 x int64 rng_state. flash-attn cannot run on the CPU tracer: these come from
    the source, not from a trace."""
    s_r = _round_up(seq, 128)
    d_r = _round_up(head_dim, 32 if head_dim <= 128 else 64)
    expanded = 2 * batch * seq * heads * head_dim * a if kv_heads != heads else 0
    return batch * heads * s_r * 4 + batch * s_r * heads * d_r * 4 + expanded


def _softcap(tp: Tape, x: int, nbytes: int) -> int:
    """Gemma 2's soft-capping, x / cap -> tanh -> * cap: three temporaries of x's size, tanh saves its output."""
    d = tp.op(nbytes, (x,))
    tp.drop(x)
    th = tp.op(nbytes, (d,), saves_out=True)
    tp.drop(d)
    out = tp.op(nbytes, (th,))
    tp.drop(th)
    return out


def _eager(tp: Tape, c: Ctx, q: int, k: int, v: int, a: int) -> int:
    """transformers `eager_attention_forward`: repeat_kv copies, S x S scores, fp32 softmax, cast back."""
    rep = c.heads // c.kv_heads
    s2 = c.batch * c.heads * c.seq * c.seq
    kr = tp.op(c.tokens * c.heads * c.head_dim * a, (k,)) if rep > 1 else tp.op(0, (k,), alias=k)
    vr = tp.op(c.tokens * c.heads * c.head_dim * a, (v,)) if rep > 1 else tp.op(0, (v,), alias=v)
    scores = tp.op(s2 * a, (q, kr), saves=(q, kr))
    tp.drop(kr)
    scaled = tp.op(s2 * a, (scores,))
    tp.drop(scores)
    if c.attn_softcap:  # gemma2 attn_logit_softcapping
        scaled = _softcap(tp, scaled, s2 * a)
    masked = tp.op(s2 * a, (scaled,))
    tp.drop(scaled)
    probs32 = tp.op(s2 * 4, (masked,), saves_out=True)
    tp.drop(masked)
    probs = tp.op(s2 * a, (probs32,)) if a != 4 else tp.op(0, (probs32,), alias=probs32)
    tp.drop(probs32)
    if c.attn_dropout > 0:  # nn.functional.dropout(attn_weights): CUDA saves a bool mask, the CPU a float noise
        mask = tp.op(s2 * (1 if c.cuda else a), grad=False)
        dropped = tp.op(s2 * a, (probs, mask), saves=(mask,))
        tp.drop(probs, mask)
        probs = dropped
    out = tp.op(c.tokens * c.heads * c.head_dim * a, (probs, vr), saves=(probs, vr))
    tp.drop(probs, vr)
    return out


def head(tp: Tape, c: Ctx, x: int, a: int, softcap: bool) -> int:
    """Final norm, lm_head over every position, `ForCausalLMLoss` (fp32 logits, log_softmax)."""
    tv = c.tokens * c.vocab
    h, ha = rmsnorm(tp, c, x, a, c.hidden)
    tp.drop(x)
    trains = c.full or c.head_trainable  # the matmul saves its input for the weight's gradient
    if c.autocast:
        la = c.compute
        logits = autocast_mm(tp, c, h, ha, c.hidden, c.vocab, trains, weight_bytes=c.lm_head_w)
    else:
        la = max(ha, c.lm_head_w)
        grad_w = c.vocab * c.hidden * c.lm_head_w if trains else 0
        logits = tp.op(tv * la, (h,), saves=(h,) if trains else (), param_grad=grad_w)
    if c.logit_scale:  # Granite `logits / logits_scaling`, Cohere `logits * logit_scale`: saves nothing
        scaled = tp.op(tv * la, (logits,))
        tp.drop(logits)
        logits = scaled
    if softcap:  # gemma2 final_logit_softcapping
        logits = _softcap(tp, logits, tv * la)
    l32 = tp.op(tv * 4, (logits,)) if la != 4 else tp.op(0, (logits,), alias=logits)
    # labels padded by one ignore_index column, then shifted and made contiguous (int64); nll_loss saves them
    padded = tp.op(8 * c.batch * (c.seq + 1), grad=False)
    shifted = tp.op(8 * c.tokens, (padded,), grad=False)
    # backward: nll_loss allocates a T x V fp32 gradient, then log_softmax another one (the tape counts both)
    lsm = tp.op(tv * 4, (l32,), saves_out=True)
    loss = tp.op(4, (lsm,), saves=(shifted,))
    # `outputs.last_hidden_state` (the final norm's output) lives in the CausalLM forward until it returns
    tp.drop(lsm, l32, logits, h, padded, shifted)
    tp.release_cached()  # the model call returns: the autocast region ends
    return loss
