"""One decoder layer, replayed on the tape as its architecture's traits say (`vramplan/traits.py`).

The parts follow the transformers 5 modeling files:
- `nn.LayerNorm` -> `native_layer_norm`: one op; it saves its input, mean and rstd ([rows] each: fp32 on CUDA,
  `layer_norm_cpu` and the meta kernel keep them in the input dtype), weight and bias (parameters).
- attention: separate q/k/v or one fused projection (`qkv_proj`, GPT-NeoX `query_key_value`: the views keep the
  whole buffer alive while sdpa saves v); q/k norms per head (Qwen3) or over the projection before the head view
  (OLMo-2 `q_norm = RMSNorm(num_heads * head_dim)`); `apply_rotary_pos_emb` on the first `rotary_ndims` of each
  head, then `torch.cat((rot, pass))` (GPT-NeoX, Phi, StableLM: partial rotary).
- MLP: `down(act(gate(x)) * up(x))`, Phi-3's fused `gate_up_proj` (`chunk`), or plain `fc2(act(fc1(x)))`; ACT2FN's
  `gelu_new` / `NewGELUActivation` is the Python formula `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`.
- layouts: pre-norm (Llama), post-norm (OLMo-2: `post_attention_layernorm(self_attn(x))`, no input norm),
  sandwich (Gemma 2), parallel (`mlp_output + attn_output + hidden_states`: GPT-NeoX, Phi-2).
- residual dropout (`nn.Dropout` / `F.dropout` on the branch outputs): CUDA `native_dropout` saves a bool mask;
  CPU `_dropout_impl` multiplies by an input-sized `bernoulli_` noise tensor in the input dtype and saves it.
"""

from __future__ import annotations

from vramplan.estimator import liger
from vramplan.estimator.programs import Ctx, attention_core, linear, rmsnorm
from vramplan.estimator.tape import Tape
from vramplan.traits import SINGLE_OP_ACTIVATIONS, Traits


def dropout(tp: Tape, c: Ctx, x: int, a: int, nbytes: int, p: float) -> int:
    """`F.dropout(x, p, training=True)`; consumes x. p == 0 returns the input (`_dropout_impl`)."""
    if p <= 0:
        return x
    elems = nbytes // a
    mask = tp.op(elems * (1 if c.cuda else a), grad=False)
    out = tp.op(nbytes, (x, mask), saves=(mask,))
    tp.drop(x, mask)
    return out


def activation(tp: Tape, x: int, nbytes: int, act: str) -> int:
    """ACT2FN[act](x); the caller owns x."""
    if act in SINGLE_OP_ACTIVATIONS:
        return tp.op(nbytes, (x,), saves=(x,))
    if act != "gelu_new":
        raise ValueError(f"activation {act!r} has no program")
    half = tp.op(nbytes, (x,))  # 0.5 * x (a scalar product saves nothing)
    cube = tp.op(nbytes, (x,), saves=(x,))  # pow(x, 3) saves x
    scaled = tp.op(nbytes, (cube,))
    tp.drop(cube)
    inner = tp.op(nbytes, (x, scaled))
    tp.drop(scaled)
    arg = tp.op(nbytes, (inner,))
    tp.drop(inner)
    th = tp.op(nbytes, (arg,), saves_out=True)
    tp.drop(arg)
    one = tp.op(nbytes, (th,))
    tp.drop(th)
    out = tp.op(nbytes, (half, one), saves=(half, one))
    tp.drop(half, one)
    return out


def rotary(tp: Tape, c: Ctx, x: int, a: int, heads: int, rope_a: int, factor: float = 1.0) -> tuple[int, int]:
    """`apply_rotary_pos_emb`: (x * cos) + (rotate_half(x) * sin); cos/sin are shared and already live, in the
    hidden states' dtype, so a bf16 x under autocast comes out fp32 (type promotion). A partial rotary rotates
    the first `rotary_ndims` of each head and `torch.cat`s the rest back. Returns (out, dtype)."""
    if "rope" in c.liger:
        return liger.rotary(tp, x, a)
    n = c.tokens * heads * c.head_dim
    nr = c.tokens * heads * int(c.head_dim * factor)
    o = max(a, rope_a)
    xc = tp.op(nr * o, (x,))
    neg = tp.op(nr * a // 2, (x,))
    rh = tp.op(nr * a, (neg, x))
    tp.drop(neg)
    rs = tp.op(nr * o, (rh,))
    tp.drop(rh)
    out = tp.op(nr * o, (xc, rs))
    tp.drop(xc, rs)
    if nr == n:
        return out, o
    full = tp.op(n * o, (out, x))
    tp.drop(out)
    return full, o


def rotary_fp32(tp: Tape, c: Ctx, q: int, k: int, a: int, rope_a: int) -> tuple[int, int, int]:
    """Cohere's `apply_rotary_pos_emb`: q and k `.float()` (copies unless fp32, held until it returns), then
    (x * cos) + (rotate_half(x) * sin) in fp32 (`rotate_half`: strided halves, `-x2`, `torch.stack(...).flatten`),
    then `.to(dtype)` back. Saves nothing of its own (cos and sin are shared). Returns (q, k, dtype)."""
    outs = []
    casts = []
    for x, heads in ((q, c.heads), (k, c.kv_heads)):
        n = c.tokens * heads * c.head_dim
        x32 = tp.op(n * 4, (x,)) if a != 4 else tp.op(0, (x,), alias=x)
        casts.append(x32)
        xc = tp.op(n * 4, (x32,))
        neg = tp.op(n * 2, (x32,))
        rh = tp.op(n * 4, (neg, x32))
        tp.drop(neg)
        rs = tp.op(n * 4, (rh,))
        tp.drop(rh)
        emb = tp.op(n * 4, (xc, rs))
        tp.drop(xc, rs)
        outs.append((emb, n))
    res = []
    for emb, n in outs:
        res.append(tp.op(n * a, (emb,)) if a != 4 else tp.op(0, (emb,), alias=emb))
        tp.drop(emb)
    tp.drop(*casts)
    return res[0], res[1], a


def attention(tp: Tape, c: Ctx, tr: Traits, x: int, a: int) -> int:
    hd = c.head_dim
    q_out, kv_out = c.heads * hd, c.kv_heads * hd
    if tr.fused_qkv:  # one projection, then views
        qkv, a2 = linear(tp, c, x, a, tr.qkv, c.hidden, q_out + 2 * kv_out)
        q, k, v = qkv, qkv, qkv
        tp.refs[qkv] += 2
    else:
        q, a2 = linear(tp, c, x, a, tr.q, c.hidden, q_out)
        k, _ = linear(tp, c, x, a, tr.k, c.hidden, kv_out)
        v, _ = linear(tp, c, x, a, tr.v, c.hidden, kv_out)
    if tr.qk_norm != "none":
        per_head = tr.qk_norm == "head"
        qn, qa = rmsnorm(tp, c, q, a2, hd if per_head else q_out, c.heads if per_head else 1)
        tp.drop(q)
        kn, _ = rmsnorm(tp, c, k, a2, hd if per_head else kv_out, c.kv_heads if per_head else 1)
        tp.drop(k)
        q, k, a2 = qn, kn, qa
    if tr.rotary_fp32:
        qr, kr, ra = rotary_fp32(tp, c, q, k, a2, a)
        tp.drop(q, k)
    elif tr.rotary_factor > 0:
        qr, ra = rotary(tp, c, q, a2, c.heads, a, tr.rotary_factor)
        tp.drop(q)
        kr, _ = rotary(tp, c, k, a2, c.kv_heads, a, tr.rotary_factor)
        tp.drop(k)
    else:  # learned absolute positions (GPT-BigCode): q and k go to attention as the projection made them
        qr, kr, ra = q, k, a2
    if c.use_cache:
        # DynamicCache.update: `torch.cat` copies of k and v (v in k's dtype: the cache is made with it), held
        # until the model output is dropped; attention runs on the copies. A fused qkv buffer is freed then.
        kc = tp.op(c.tokens * kv_out * ra, (kr,))
        vc = tp.op(c.tokens * kv_out * max(ra, a2), (v,))
        tp.drop(kr, v)
        tp.cached += [kc, vc]
        tp.refs[kc] += 1
        tp.refs[vc] += 1
        kr, v = kc, vc
        va = max(ra, a2)
    else:
        va = a2
    if c.autocast and ra != c.compute:  # sdpa is on autocast's lower-precision list: q and k are cast back
        qc, kc = tp.op(c.tokens * q_out * c.compute, (qr,)), tp.op(c.tokens * kv_out * c.compute, (kr,))
        tp.drop(qr, kr)
        qr, kr, ra = qc, kc, c.compute
        if va != c.compute:
            vc = tp.op(c.tokens * kv_out * c.compute, (v,))
            tp.drop(v)
            v = vc
    out = attention_core(tp, c, qr, kr, v, ra)
    tp.drop(qr, kr, v)
    o, oa = linear(tp, c, out, ra, tr.o, q_out, c.hidden)
    tp.drop(out)
    return dropout(tp, c, o, oa, c.tokens * c.hidden * oa, tr.resid_dropout)


def dense_mlp(tp: Tape, c: Ctx, tr: Traits, x: int, a: int, inter: int) -> int:
    t = c.tokens
    if not tr.gated_mlp:  # fc2(act(fc1(x)))
        up, a2 = linear(tp, c, x, a, tr.up, c.hidden, inter)
        h = activation(tp, up, t * inter * a2, tr.activation)
        tp.drop(up)
    elif tr.fused_gate_up:
        gu, a2 = linear(tp, c, x, a, tr.gate_up, c.hidden, 2 * inter)
        if "swiglu" in c.liger:
            return _down(tp, c, tr, liger.swiglu_fused(tp, c, gu, a2, inter), a2, inter)
        act = tp.op(t * inter * a2, (gu,), saves=(gu,))  # act(gate) saves the gate view: the whole buffer
        h = tp.op(t * inter * a2, (gu, act), saves=(gu, act))
        tp.drop(gu, act)
    else:
        gate, a2 = linear(tp, c, x, a, tr.gate, c.hidden, inter)
        if "swiglu" in c.liger:
            up, _ = linear(tp, c, x, a, tr.up, c.hidden, inter)
            return _down(tp, c, tr, liger.swiglu(tp, c, gate, up, a2, inter), a2, inter)
        act = activation(tp, gate, t * inter * a2, tr.activation)
        tp.drop(gate)
        up, _ = linear(tp, c, x, a, tr.up, c.hidden, inter)
        h = tp.op(t * inter * a2, (act, up), saves=(act, up))
        tp.drop(act, up)
    return _down(tp, c, tr, h, a2, inter)


def _down(tp: Tape, c: Ctx, tr: Traits, h: int, a2: int, inter: int) -> int:
    """down_proj of the MLP's hidden product (consumed), then the residual dropout."""
    out, oa = linear(tp, c, h, a2, tr.down, inter, c.hidden)
    tp.drop(h)
    return dropout(tp, c, out, oa, c.tokens * c.hidden * oa, tr.resid_dropout)


def mlp(tp: Tape, c: Ctx, tr: Traits, x: int, a: int, inter: int) -> int:
    if not c.experts:
        return dense_mlp(tp, c, tr, x, a, inter)
    from vramplan.estimator.moe import moe  # the sparse block: loaded for MoE models only (import cost)

    return moe(tp, c, x, a)


def _post_norm(tp: Tape, c: Ctx, y: int, a: int) -> int:
    out, _ = rmsnorm(tp, c, y, a, c.hidden)
    tp.drop(y)
    return out


def _scaled(tp: Tape, y: int) -> int:
    """Granite's `branch * residual_multiplier`: a product by a Python float, in the branch's dtype; it saves
    nothing (`mul` by a scalar). Consumes y."""
    out = tp.op(tp.size[y], (y,))
    tp.drop(y)
    return out


def decoder_layer(tp: Tape, c: Ctx, tr: Traits, x: int, a: int, inter: int) -> int:
    """One decoder layer; consumes x (drops the program's reference) and returns the new hidden state."""
    n = c.tokens * c.hidden * a
    if tr.layout == "parallel":
        return _parallel_layer(tp, c, tr, x, a, inter)
    if tr.layout == "post":  # OLMo-2: the branches read the residual stream directly
        h, ha = x, a
        tp.refs[x] += 1
    else:
        h, ha = rmsnorm(tp, c, x, a, c.hidden)
    attn = attention(tp, c, tr, h, ha)
    tp.drop(h)
    if tr.layout in ("post", "sandwich"):
        attn = _post_norm(tp, c, attn, a)
    if tr.residual_multiplier:
        attn = _scaled(tp, attn)
    x2 = tp.op(n, (x, attn))
    tp.drop(x, attn)
    if tr.layout == "post":
        pre, pa = x2, a
        tp.refs[x2] += 1
    else:
        pre, pa = rmsnorm(tp, c, x2, a, c.hidden)
    m = mlp(tp, c, tr, pre, pa, inter)
    tp.drop(pre)
    if tr.layout in ("post", "sandwich"):
        m = _post_norm(tp, c, m, a)
    if tr.residual_multiplier:
        m = _scaled(tp, m)
    y = tp.op(n, (x2, m))
    tp.drop(x2, m)
    return y


def _parallel_layer(tp: Tape, c: Ctx, tr: Traits, x: int, a: int, inter: int) -> int:
    """Attention and MLP read the same input (one shared norm, or one each): `mlp + attn + residual`."""
    n = c.tokens * c.hidden * a
    h, ha = rmsnorm(tp, c, x, a, c.hidden)
    attn = attention(tp, c, tr, h, ha)
    if tr.parallel_norms > 1:
        tp.drop(h)
        h, ha = rmsnorm(tp, c, x, a, c.hidden)
    m = mlp(tp, c, tr, h, ha, inter)
    tp.drop(h)
    s = tp.op(n, (m, attn))
    tp.drop(m, attn)
    y = tp.op(n, (s, x))
    tp.drop(s, x)
    return y
