"""The forward programs replayed on the tape: one decoder layer, and the head (final norm, lm_head, loss).

Each function follows the transformers 5 / peft / bitsandbytes source line by line, keeping only what allocates:
- `LlamaRMSNorm.forward`: x.to(fp32) -> pow(2) -> mean -> +eps -> rsqrt -> mul -> .to(input dtype) -> weight *.
  (`GemmaRMSNorm` computes in fp32 and returns `.type_as(x)`.)
- bitsandbytes `Linear4bit.forward`: x.to(compute_dtype) -> `MatMul4Bit` (saves no activation) -> .to(input dtype).
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
    attn_softcap: bool = False  # gemma2: scores / cap -> tanh -> * cap (eager)
    sdpa_mask: bool = False  # sdpa gets an explicit (sliding-window) mask instead of is_causal
    quant_w: int = 2  # bytes per element of a dequantized 4-bit weight (QuantState.dtype: the loading dtype)
    quant_blocksize: int = 64
    double_quant: bool = False
    kernel_dequant: bool = False  # CUDA gemm_4bit takes its dequantize + F.linear path (see linear())
    cuda: bool = True  # False: what the CPU tracer sees (dropout keeps a float mask there)


def rmsnorm(tp: Tape, c: Ctx, x: int, a: int, width: int) -> tuple[int, int]:
    """Returns (output, output dtype bytes). Drops nothing: the caller owns x."""
    n = c.tokens * width
    x32 = tp.op(n * 4, (x,)) if a != 4 else tp.op(0, (x,), alias=x)
    sq = tp.op(n * 4, (x32,), saves=(x32,), bwd_temp=n * 4)
    var = tp.op(c.tokens * 4, (sq,))
    tp.drop(sq)
    var_eps = tp.op(c.tokens * 4, (var,))
    tp.drop(var)
    r = tp.op(c.tokens * 4, (var_eps,), saves_out=True)
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


def linear(tp: Tape, c: Ctx, x: int, a: int, name: str, n_in: int, n_out: int) -> tuple[int, int]:
    """A decoder linear (16-bit, or 4-bit), with LoRA when targeted. Returns (output, dtype bytes)."""
    t = c.tokens
    if c.quantized:
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
    else:
        grad_w = n_out * n_in * c.linear_w if c.full else 0
        res = tp.op(t * n_out * a, (x,), saves=(x,) if c.full else (), param_grad=grad_w)
        res_a = a
    if name not in c.lora:
        return res, res_a
    xa = tp.op(t * n_in * 4, (x,)) if a != 4 else tp.op(0, (x,), alias=x)
    if c.dropout:
        # nn.Dropout on CUDA: native_dropout saves a bool mask. On CPU (`_dropout_impl`) the mask is
        # `empty_like(input).bernoulli_()`, as wide as the input, saved by `input * noise`. The output feeds
        # lora_A, which saves it.
        # Without a gradient to the input (the first layer, frozen below) no node saves the mask.
        mask = tp.op(t * n_in * (1 if c.cuda else 4), grad=False)
        xd = tp.op(t * n_in * 4, (xa, mask), saves=(mask,))
        tp.drop(xa, mask)
        xa = xd
    ha = tp.op(t * c.rank * 4, (xa,), saves=(xa,), grad=True, param_grad=c.rank * n_in * 4)
    tp.drop(xa)
    hb = tp.op(t * n_out * 4, (ha,), saves=(ha,), grad=True, param_grad=n_out * c.rank * 4)
    tp.drop(ha)
    scaled = tp.op(t * n_out * 4, (hb,))
    tp.drop(hb)
    total = tp.op(t * n_out * 4, (res, scaled))
    tp.drop(res, scaled)
    out = tp.op(t * n_out * res_a, (total,)) if res_a != 4 else tp.op(0, (total,), alias=total)
    tp.drop(total)
    return out, res_a


def attention_core(tp: Tape, c: Ctx, q: int, k: int, v: int, a: int) -> int:
    """sdpa / flash: saves q, k, v, the output and an fp32 logsumexp per (batch, head, position).

    The flash, memory-efficient and CPU-flash kernels all take `out` and `logsumexp` back in their backward
    (`_scaled_dot_product_flash_attention_backward(grad_out, q, k, v, out, logsumexp, ...)`), so autograd saves
    the output too.
    """
    if c.attn == "eager":
        return _eager(tp, c, q, k, v, a)
    out_bytes = c.tokens * c.heads * c.head_dim * a
    lse = c.batch * c.heads * c.seq * 4
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
    if c.attn_softcap:  # gemma2 attn_logit_softcapping; tanh saves its output
        d = tp.op(s2 * a, (scaled,))
        tp.drop(scaled)
        th = tp.op(s2 * a, (d,), saves_out=True)
        tp.drop(d)
        scaled = tp.op(s2 * a, (th,))
        tp.drop(th)
    masked = tp.op(s2 * a, (scaled,))
    tp.drop(scaled)
    probs32 = tp.op(s2 * 4, (masked,), saves_out=True)
    tp.drop(masked)
    probs = tp.op(s2 * a, (probs32,)) if a != 4 else tp.op(0, (probs32,), alias=probs32)
    tp.drop(probs32)
    out = tp.op(c.tokens * c.heads * c.head_dim * a, (probs, vr), saves=(probs, vr))
    tp.drop(probs, vr)
    return out


def rotary(tp: Tape, c: Ctx, x: int, a: int, heads: int) -> int:
    """`apply_rotary_pos_emb`: (x * cos) + (rotate_half(x) * sin); cos/sin are shared and already live."""
    n = c.tokens * heads * c.head_dim * a
    xc = tp.op(n, (x,))
    neg = tp.op(n // 2, (x,))
    rh = tp.op(n, (neg, x))
    tp.drop(neg)
    rs = tp.op(n, (rh,))
    tp.drop(rh)
    out = tp.op(n, (xc, rs))
    tp.drop(xc, rs)
    return out


def attention(tp: Tape, c: Ctx, x: int, a: int, model_type: str) -> int:
    hd = c.head_dim
    q_out, kv_out = c.heads * hd, c.kv_heads * hd
    if model_type == "phi3":  # one fused projection, then views
        qkv, a2 = linear(tp, c, x, a, "qkv_proj", c.hidden, q_out + 2 * kv_out)
        q, k, v = qkv, qkv, qkv
        tp.refs[qkv] += 2
    else:
        q, a2 = linear(tp, c, x, a, "q_proj", c.hidden, q_out)
        k, _ = linear(tp, c, x, a, "k_proj", c.hidden, kv_out)
        v, _ = linear(tp, c, x, a, "v_proj", c.hidden, kv_out)
    if model_type in ("qwen3", "qwen3_moe", "gemma3_text"):
        qn, _ = rmsnorm(tp, c, q, a2, hd)
        tp.drop(q)
        kn, _ = rmsnorm(tp, c, k, a2, hd)
        tp.drop(k)
        q, k = qn, kn
    qr = rotary(tp, c, q, a2, c.heads)
    tp.drop(q)
    kr = rotary(tp, c, k, a2, c.kv_heads)
    tp.drop(k)
    out = attention_core(tp, c, qr, kr, v, a2)
    tp.drop(qr, kr, v)
    o, _ = linear(tp, c, out, a2, "o_proj", q_out, c.hidden)
    tp.drop(out)
    return o


def mlp(tp: Tape, c: Ctx, x: int, a: int, model_type: str, inter: int) -> int:
    t = c.tokens
    if model_type == "phi3":
        gu, a2 = linear(tp, c, x, a, "gate_up_proj", c.hidden, 2 * inter)
        act = tp.op(t * inter * a2, (gu,), saves=(gu,))  # silu(gate) saves the gate view: the whole buffer
        h = tp.op(t * inter * a2, (gu, act), saves=(gu, act))
        tp.drop(gu, act)
    else:
        gate, a2 = linear(tp, c, x, a, "gate_proj", c.hidden, inter)
        act = tp.op(t * inter * a2, (gate,), saves=(gate,))  # silu / gelu save their input
        tp.drop(gate)
        up, _ = linear(tp, c, x, a, "up_proj", c.hidden, inter)
        h = tp.op(t * inter * a2, (act, up), saves=(act, up))
        tp.drop(act, up)
    out, _ = linear(tp, c, h, a2, "down_proj", inter, c.hidden)
    tp.drop(h)
    return out


def decoder_layer(tp: Tape, c: Ctx, x: int, a: int, model_type: str, inter: int, sandwich: bool) -> int:
    """One decoder layer; consumes x (drops the program's reference) and returns the new hidden state."""
    n = c.tokens * c.hidden * a
    h, ha = rmsnorm(tp, c, x, a, c.hidden)
    attn = attention(tp, c, h, ha, model_type)
    tp.drop(h)
    if sandwich:  # gemma2: post_attention_layernorm on the attention output before the residual add
        attn2, _ = rmsnorm(tp, c, attn, a, c.hidden)
        tp.drop(attn)
        attn = attn2
    x2 = tp.op(n, (x, attn))
    tp.drop(x, attn)
    pre = rmsnorm(tp, c, x2, a, c.hidden)[0]
    m = mlp(tp, c, pre, a, model_type, inter)
    tp.drop(pre)
    if sandwich:
        m2, _ = rmsnorm(tp, c, m, a, c.hidden)
        tp.drop(m)
        m = m2
    y = tp.op(n, (x2, m))
    tp.drop(x2, m)
    return y


def head(tp: Tape, c: Ctx, x: int, a: int, softcap: bool) -> int:
    """Final norm, lm_head over every position, `ForCausalLMLoss` (fp32 logits, log_softmax)."""
    tv = c.tokens * c.vocab
    h, ha = rmsnorm(tp, c, x, a, c.hidden)
    tp.drop(x)
    la = max(ha, c.lm_head_w)
    grad_w = c.vocab * c.hidden * c.lm_head_w if c.full else 0
    logits = tp.op(tv * la, (h,), saves=(h,) if c.full else (), param_grad=grad_w)
    if softcap:  # gemma2 final_logit_softcapping: logits / cap -> tanh (saves its output) -> * cap
        d = tp.op(tv * la, (logits,))
        tp.drop(logits)
        th = tp.op(tv * la, (d,), saves_out=True)
        tp.drop(d)
        logits = tp.op(tv * la, (th,))
        tp.drop(th)
    l32 = tp.op(tv * 4, (logits,)) if la != 4 else tp.op(0, (logits,), alias=logits)
    # labels padded by one ignore_index column, then shifted and made contiguous (int64); nll_loss saves them
    padded = tp.op(8 * c.batch * (c.seq + 1), grad=False)
    shifted = tp.op(8 * c.tokens, (padded,), grad=False)
    # backward: nll_loss allocates a T x V fp32 gradient, then log_softmax another one (the tape counts both)
    lsm = tp.op(tv * 4, (l32,), saves_out=True)
    loss = tp.op(4, (lsm,), saves=(shifted,))
    # `outputs.last_hidden_state` (the final norm's output) lives in the CausalLM forward until it returns
    tp.drop(lsm, l32, logits, h, padded, shifted)
    return loss
