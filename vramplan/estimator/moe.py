"""The sparse MoE block replayed on the tape: router, top-k, transformers 5's fused 3-D experts run by the default
`grouped_mm` (integrations/moe.py `grouped_mm_experts_forward`), peft's `ParamWrapper` LoRA on them, and
Qwen2-MoE's shared expert. Split from `programs.py` (the linears, norms and attention it calls live there).
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.estimator.programs import Ctx, linear
from vramplan.estimator.tape import Tape


def moe(tp: Tape, c: Ctx, x: int, a: int) -> int:
    """transformers' sparse MoE block with the default `grouped_mm` experts (integrations/moe.py
    `grouped_mm_experts_forward`): S = tokens x top_k rows, sorted by expert, two grouped matmuls.
    Under `--transformers 4` the per-expert loop of 4.x (`moe_v4`)."""
    if c.experts_v4:
        return moe_v4(tp, c, x, a)
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
    return _shared_expert(tp, c, x, a, out)


def _shared_expert(tp: Tape, c: Ctx, x: int, a: int, out: int) -> int:
    """qwen2_moe: `out + sigmoid(shared_expert_gate(x)) * shared_expert(x)` (out consumed); else out."""
    if not c.shared_inter:
        return out
    t, h = c.tokens, c.hidden
    sh = _dense_mlp(tp, c, x, a, c.shared_inter)
    g = linear(tp, c, x, a, "shared_expert_gate", h, 1)[0]
    sg = tp.op(t * a, (g,), saves_out=True)
    tp.drop(g)
    shw = tp.op(t * h * a, (sg, sh), saves=(sg, sh))
    tp.drop(sg, sh)
    tot = tp.op(t * h * a, (out, shw))
    tp.drop(out, shw)
    return tot


def expert_rows(tokens: int, top_k: int, experts: int) -> tuple[int, ...]:
    """Rows each expert of a transformers 4.x MoE block gets, in loop order. The real split is data-dependent
    (the router's top-k); the bound used: the last expert takes every token, the most one expert can get (a
    token's top-k experts are distinct), the others share the remaining tokens x (top_k - 1) evenly. The rows
    sum to tokens x top_k whatever the split, so the saved activations are exact; what the split changes is the
    one expert's transient (its MLP's intermediates, the next expert's overlap), which this bound maximises
    and the balanced split (tokens x top_k / experts each) would undercount when the router is skewed."""
    if experts == 1:
        return (tokens,)
    base, extra = divmod(tokens * (top_k - 1), experts - 1)
    return tuple(base + (i < extra) for i in range(experts - 1)) + (tokens,)


def moe_v4(tp: Tape, c: Ctx, x: int, a: int) -> int:
    """transformers 4.57 `MixtralSparseMoeBlock.forward` (Qwen2-MoE / Qwen3-MoE alike): the router `gate` is an
    nn.Linear (4-bit under QLoRA, LoRA when targeted: `linear`); softmax(fp32) saves its output, topk its
    indices; Mixtral (and Qwen with `norm_topk_prob`) divides them by their sum in place; they go back to the
    hidden dtype (`.to(hidden_states.dtype)`); `final` = zeros;
    `one_hot(selected, E)` [T, k, E] int64 masks the experts; then for each expert hit (`expert_hit`, in index
    order) `torch.where` picks its (idx, top_x), `hidden_states[None, top_x]` gathers its rows (saves top_x),
    the expert MLP runs on them, `* routing_weights[top_x, idx, None]` (saves both factors) and
    `final.index_add_(0, top_x, ...)` (saves top_x and the added rows: derivatives.yaml `index_add`'s source
    gradient is `grad.index_select(dim, index).expand_as(source)`). Locals live until rebound by the next expert."""
    t, h, e, k = c.tokens, c.hidden, c.experts, c.top_k
    logits, la = linear(tp, c, x, a, "gate", h, e)
    l32 = tp.op(t * e * 4, (logits,)) if la != 4 else tp.op(0, (logits,), alias=logits)
    tp.drop(logits)
    probs = tp.op(t * e * 4, (l32,), saves_out=True)
    tp.drop(l32)
    idx = tp.op(t * k * 8, grad=False)
    topv = tp.op(t * k * 4, (probs, idx), saves=(idx,))
    tp.drop(probs)
    if c.norm_topk:  # routing_weights /= sum(-1, keepdim): div_ saves the divisor and a clone of the original
        sums = tp.op(t * 4, (topv,))
        orig = tp.op(t * k * 4, (topv,), grad=False)
        tp.drop(topv)  # in place: the same storage
        topv = tp.op(t * k * 4, (topv, sums), saves=(orig, sums))
        tp.drop(orig, sums)
    rw = tp.op(t * k * a, (topv,)) if a != 4 else tp.op(0, (topv,), alias=topv)
    tp.drop(topv, idx)
    final = tp.op(t * h * a, grad=False)  # torch.zeros
    mask = tp.op(t * k * e * 8, grad=False)  # one_hot(...).permute(2, 1, 0): a view
    hit = tp.op(e * 8 + e + e * 8, (mask,), grad=False)  # sum(dim=(-1, -2)), greater, nonzero
    prev: tuple[int, ...] = ()
    on_rows: dict[int, Ctx] = {}  # the context of an expert on n rows: few distinct n, one copy each
    for n in (r for r in expert_rows(t, k, e) if r):
        cn = on_rows.get(n) or on_rows.setdefault(n, replace(c, tokens=n))
        final, prev = _expert_v4(tp, cn, t, x, a, rw, final, prev)
    tp.drop(*prev, rw, mask, hit)
    return _shared_expert(tp, c, x, a, final)


def _expert_v4(tp: Tape, c: Ctx, t: int, x: int, a: int, rw: int, final: int,
               prev: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """One expert of `moe_v4` on its `c.tokens` rows (of t). `prev`: the previous expert's (where, gathered
    rows, weighted output), freed as this one rebinds them. Returns (final after index_add_, this one's)."""
    n, h, k = c.tokens, c.hidden, c.top_k
    em = tp.op(t * k * 8, grad=False)  # expert_mask[expert_idx]: an advanced index, a copy
    nz = tp.op(n * 2 * 8, (em,), grad=False)  # torch.where -> nonzero [n, 2]: idx, top_x are its columns
    tp.drop(em, *prev[:1])
    cs = tp.op(n * h * a, (x, nz), saves=(nz,))  # hidden_states[None, top_x]
    tp.drop(*prev[1:2])
    out = _dense_mlp(tp, c, cs, a, c.moe_inter, c.experts_v4)
    rws = tp.op(n * a, (rw, nz), saves=(nz,))  # routing_weights[top_x, idx, None]
    cur = tp.op(n * h * a, (out, rws), saves=(out, rws))
    tp.drop(out, rws, *prev[2:])
    tp.drop(final)  # index_add_ writes in place: the same storage (its backward passes the gradient through)
    final = tp.op(t * h * a, (final, cur), saves=(nz, cur))  # its backward expands to `source`: saved
    return final, (nz, cs, cur)


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


def _dense_mlp(tp: Tape, c: Ctx, x: int, a: int, inter: int,
               names: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")) -> int:
    """gate_proj / up_proj / down_proj with a gated activation (also qwen2_moe's shared expert, and a 4.x expert:
    Mixtral's `w2(act(w1(x)) * w3(x))`)."""
    t = c.tokens
    gate_name, up_name, down_name = names
    gate, a2 = linear(tp, c, x, a, gate_name, c.hidden, inter)
    act = tp.op(t * inter * a2, (gate,), saves=(gate,))  # silu / gelu save their input
    tp.drop(gate)
    up, _ = linear(tp, c, x, a, up_name, c.hidden, inter)
    h = tp.op(t * inter * a2, (act, up), saves=(act, up))
    tp.drop(act, up)
    out, _ = linear(tp, c, h, a2, down_name, inter, c.hidden)
    tp.drop(h)
    return out
