"""The sparse MoE block replayed on the tape: router, top-k, transformers 5's fused 3-D experts run by the default
`grouped_mm` (integrations/moe.py `grouped_mm_experts_forward`), peft's `ParamWrapper` LoRA on them, and
Qwen2-MoE's shared expert. Split from `programs.py` (the linears, norms and attention it calls live there).
"""

from __future__ import annotations

from vramplan.estimator.programs import Ctx, linear
from vramplan.estimator.tape import Tape


def moe(tp: Tape, c: Ctx, x: int, a: int) -> int:
    """transformers' sparse MoE block with the default `grouped_mm` experts (integrations/moe.py
    `grouped_mm_experts_forward`): S = tokens x top_k rows, sorted by expert, two grouped matmuls."""
    t, h, e, k = c.tokens, c.hidden, c.experts, c.top_k
    s_rows, wd = t * k, c.expert_w
    # router: F.linear(x, weight) -> softmax(fp32) (saves its output) -> topk (saves its indices)
    if c.router_lora:  # W + delta (peft `_LoraParameterProxy`): a fresh weight that needs grad, so x is saved
        rw = _lora_weight(tp, c, 1, e, h, 1)
        logits = tp.op(t * e * a, (x, rw), saves=(x, rw))
        tp.drop(rw)
    else:
        logits = tp.op(t * e * a, (x,), saves=(x,) if c.full else (), param_grad=e * h * c.norm_w if c.full else 0)
    l32 = tp.op(t * e * 4, (logits,)) if a != 4 else tp.op(0, (logits,), alias=logits)
    probs = tp.op(t * e * 4, (l32,), saves_out=True)
    tp.drop(l32)
    idx = tp.op(t * k * 8, grad=False)
    topv = tp.op(t * k * 4, (probs, idx), saves=(idx,))
    tp.drop(probs)
    # (top /= top.sum(-1, keepdim=True) works in place: [tokens] fp32 sums, left out)
    sw_a = 4 if c.weights_fp32_scores else a
    if sw_a != 4:
        tw = tp.op(t * k * sw_a, (topv,))
        tp.drop(topv)
        topv = tw
    # experts: sort the (token, k) pairs by expert, gather rows, grouped matmuls, scatter back
    perm = tp.op(s_rows * 16, (idx,), grad=False)  # sorted expert ids + permutation (int64)
    tp.drop(logits, idx)
    rows = tp.op(s_rows * 8, (perm,), grad=False)  # perm // top_k: the gather index, saved by index
    sel = tp.op(s_rows * h * a, (x, rows), saves=(rows,))
    sw = tp.op(s_rows * sw_a, (topv, perm), saves=(perm,))
    tp.drop(topv, rows)
    hist = tp.op(s_rows * 4 + 2 * e * 4, (perm,), grad=False)  # histc input (float on CPU, int32 on CUDA), bins
    sel_w = tp.op(s_rows * h * wd, (sel,)) if a != wd else tp.op(0, (sel,), alias=sel)
    tp.drop(sel)
    inter = c.moe_inter
    cached_w: list[int] = []  # parametrize.cached(): the LoRA-folded weights, until the experts call returns
    if "gate_up_proj" in c.expert_lora:
        wgu = _lora_weight(tp, c, e, 2 * inter, h, 2)  # cached until the experts call returns
        gu = tp.op(s_rows * 2 * inter * wd, (sel_w, wgu), saves=(sel_w, wgu))
        cached_w.append(wgu)
    else:
        gu = tp.op(s_rows * 2 * inter * wd, (sel_w,), saves=(sel_w,) if c.full else (),
                   param_grad=e * 2 * inter * h * wd if c.full else 0)
    tp.drop(sel_w)
    act = tp.op(s_rows * c.moe_inter * wd, (gu,), saves=(gu,))
    mid = tp.op(s_rows * c.moe_inter * wd, (act, gu), saves=(act, gu))
    tp.drop(act, gu)
    if "down_proj" in c.expert_lora:
        wdn = _lora_weight(tp, c, e, h, inter, 1)
        down = tp.op(s_rows * h * wd, (mid, wdn), saves=(mid, wdn))
        cached_w.append(wdn)
    else:
        down = tp.op(s_rows * h * wd, (mid,), saves=(mid,) if c.full else (),
                     param_grad=e * h * inter * wd if c.full else 0)
    tp.drop(mid)
    wa = max(wd, sw_a)
    weighted = tp.op(s_rows * h * wa, (down, sw), saves=(down, sw))
    tp.drop(down, sw, hist)
    inv = tp.op(s_rows * 8, (perm,), grad=False)
    tp.drop(perm)
    back = tp.op(s_rows * h * wa, (weighted, inv), saves=(inv,))
    tp.drop(weighted, inv)
    out = tp.op(t * h * wa, (back,))  # view(tokens, top_k, hidden).sum(1)
    tp.drop(back)
    if wa != a:
        oc = tp.op(t * h * a, (out,))
        tp.drop(out)
        out = oc
    tp.drop(*cached_w)
    if c.shared_inter:  # qwen2_moe: sigmoid(shared_expert_gate(x)) * shared_expert(x), added
        sh = _dense_mlp(tp, c, x, a, c.shared_inter)
        g = linear(tp, c, x, a, "shared_expert_gate", h, 1)[0]
        sg = tp.op(t * a, (g,), saves_out=True)
        tp.drop(g)
        shw = tp.op(t * h * a, (sg, sh), saves=(sg, sh))
        tp.drop(sg, sh)
        tot = tp.op(t * h * a, (out, shw))
        tp.drop(out, shw)
        out = tot
    return out


def _lora_weight(tp: Tape, c: Ctx, e: int, n_out: int, n_in: int, fused: int) -> int:
    """A parameter wrapped by peft's `ParamWrapper` (LoRA on a 3-D expert stack [E, out, in], or a 2-D weight):
    lora_A is (r x E, in), lora_B (out, r x E), fp32; the rank is r times the v4 linears fused into the
    parameter (`rank_pattern`: gate_up_proj 2r). Inside `_activate_lora`, `get_delta_factors` casts both factors
    to the parameter's dtype (`.to(param.dtype)`: copies when it is not fp32) and `_LoraFactorsProxy` folds them
    in with `torch.baddbmm(W, lhs, rhs)`: a whole new weight in the parameter's dtype, cached by
    `parametrize.cached()` for the module call and saved by the matmul that uses it (its input's gradient).
    In backward that matmul makes a full-size weight gradient, which baddbmm turns into the factors' gradients.
    A 2-D weight (E = 1: the router) takes `_LoraParameterProxy`: W + (B @ A * scaling).to(W.dtype)."""
    r, wd = c.rank * fused * e, c.expert_w
    grads = (r * n_in + n_out * r) * 4
    if e == 1:  # delta = B @ A (fp32), * scaling, .to(W dtype); W + delta
        delta = tp.op(n_out * n_in * wd, grad=True, param_grad=grads, temp=2 * n_out * n_in * 4)
        w = tp.op(n_out * n_in * wd, (delta,))
        tp.drop(delta)
        return w
    cast = wd != 4
    lhs = tp.op(n_out * r * wd if cast else 0, grad=True, param_grad=n_out * r * 4)  # from lora_B
    rhs = tp.op(r * n_in * wd if cast else 0, grad=True, param_grad=r * n_in * 4)  # from lora_A
    w = tp.op(e * n_out * n_in * wd, (lhs, rhs), saves=(lhs, rhs))
    tp.drop(lhs, rhs)
    return w


def _dense_mlp(tp: Tape, c: Ctx, x: int, a: int, inter: int) -> int:
    """gate_proj / up_proj / down_proj with a gated activation (also qwen2_moe's shared expert)."""
    t = c.tokens
    gate, a2 = linear(tp, c, x, a, "gate_proj", c.hidden, inter)
    act = tp.op(t * inter * a2, (gate,), saves=(gate,))  # silu / gelu save their input
    tp.drop(gate)
    up, _ = linear(tp, c, x, a, "up_proj", c.hidden, inter)
    h = tp.op(t * inter * a2, (act, up), saves=(act, up))
    tp.drop(act, up)
    out, _ = linear(tp, c, h, a2, "down_proj", inter, c.hidden)
    tp.drop(h)
    return out
