"""Liger kernels (`--liger`: transformers/TRL `use_liger_kernel=True`), replayed on the tape. Liger-Kernel 0.8.5.

Which kernels a model gets: transformers 5 `Trainer.__init__` -> `integrations.liger.apply_liger_kernel` ->
liger's `_apply_liger_kernel_to_instance(model, **liger_kernel_config)`, which calls
`MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]` with its defaults (`LIGER_KERNELS` in vramplan/traits.py); a model
type missing from that table gets nothing. TRL 1.16's `SFTTrainer`/`DPOTrainer.__init__` force
`fused_linear_cross_entropy=False` (it would replace the forward that `add_fused_lm_head` patches): under
`trl-*` only the layer kernels apply.

What each kernel allocates and saves, from liger_kernel/ops (the Triton kernels write into buffers the Python
wrapper allocated; they allocate nothing themselves):
- `LigerRMSNormFunction` (ops/rms_norm.py `rms_norm_forward`): Y in X's dtype (`torch.empty`, not promoted to the
  weight's dtype as the eager norm is), RSTD fp32 [rows]; saves X (the input, already alive) and RSTD. Backward
  (`rms_norm_backward`): `in_place=True` writes dX into dY's buffer (gemma2/gemma3/olmo2 post norms pass
  `in_place=False`: `torch.zeros_like(dY)`); a trainable weight adds an fp32 [sm_count, width] partial `_dW`, its
  fp32 sum and the cast.
- `LigerSiLUMulFunction` (ops/swiglu.py): c = `torch.empty_like(a)`; saves a (gate) and b (up); backward writes
  da and db into a and b (`swiglu_backward` returns them): no new tensor. Phi-3's `LigerPhi3SwiGLUMLP` chunks
  `gate_up_proj`'s output: `ensure_contiguous` copies both halves first.
- `LigerRopeFunction` (ops/rope.py `rope_forward`): rotates q and k in place (`q.transpose(1, 2).contiguous()`
  is the projection's own buffer) and saves cos and sin (already alive); backward rotates dq, dk in place.
- `LigerFusedLinearCrossEntropyFunction` (ops/fused_linear_cross_entropy.py `fused_linear_cross_entropy_forward`)
  through `lce_forward` (transformers/model/llama.py and its copies) -> `LigerForCausalLMLoss`: labels padded by
  one ignore column and shifted (int64, every position); `grad_input = zeros_like(_input)` [BT, H];
  `grad_weight = zeros_like(weight)` when lm_head trains (the weight's dtype: accum_dtype None); `loss_1d` fp32
  [BT]; `target_mask` bool [BT]; one logits buffer of `chunk_rows` x V in the input dtype, reused by every chunk
  (`_can_use_mm_out`: CUDA, input and weight of one dtype, autocast agreeing), else a new logits chunk and a
  [chunk, H] product per chunk. The cross-entropy kernel writes the logits' gradient into the logits buffer; the
  forward already computes grad_input and grad_weight and saves them; backward scales them in place
  (`element_mul_kernel`) and returns them: the logits [BT, V] never exist. Nothing keeps the final norm's output.

Not modelled (the eager programs stay, an upper bound since each Liger kernel saves less): GEGLU (Gemma), the
MoE experts (`LigerExperts`), LayerNorm models, and the fp32 `grad_weight` accumulation of mixed precision
(`accum_dtype`). The tape has no in-place backward: a kernel that writes its input gradients into buffers it
holds goes through `_inplace_grads`, a zero-byte node whose backward allocates those gradients after the node
above released what it saved: the same bytes at the same moment.
"""

from __future__ import annotations

from vramplan.estimator.tape import Tape
from vramplan.traits import Traits

# SMs of the largest GPU the partial weight gradient of the RMSNorm backward is sized for (H100 SXM: 132): the
# real count is the device's `multi_processor_count`; the buffer is [sm_count, width] fp32, a few MB at most
LIGER_SM_COUNT = 132


def liger_kernels(traits: Traits, trainer: str) -> frozenset[str]:
    """The kernels `use_liger_kernel=True` applies to this architecture under this trainer."""
    kernels = frozenset(traits.liger_kernels)
    if trainer.startswith("trl-"):  # SFTTrainer/DPOTrainer: liger_kernel_config fused_linear_cross_entropy=False
        kernels -= {"flce"}
    return kernels


def plan_kernels(traits: Traits, plan) -> frozenset[str]:
    """`Ctx.liger` of a plan: nothing without `--liger`."""
    return liger_kernels(traits, plan.trainer) if plan.liger else frozenset()


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def chunk_rows(tokens: int, vocab: int, hidden: int, chunk_mem_const: int = 1) -> int:
    """Rows of each logits chunk: `inc_factor = cdiv(V, chunk_mem_const * H)`, `chunk_size =
    min(next_power_of_2(cdiv(BT, inc_factor)), BT)` (fused_linear_cross_entropy_forward; `_CHUNK_MEM_CONST` 1)."""
    inc = -(-vocab // (chunk_mem_const * hidden))
    return min(next_power_of_2(-(-tokens // inc)), tokens)


def _inplace_grads(tp: Tape, *inputs: int) -> int:
    """A zero-byte stand-in for `inputs` whose backward allocates their gradients (see the module docstring)."""
    return tp.op(0, inputs)


def rmsnorm(tp: Tape, c, x: int, a: int, width: int, groups: int = 1) -> tuple[int, int]:
    """`LigerRMSNorm.forward`; the caller owns x. Returns (output, dtype bytes): the output keeps x's dtype."""
    rows = c.tokens * groups
    in_place = "rms_norm_copy" not in c.liger
    rstd = tp.op(rows * 4, grad=False)
    src = _inplace_grads(tp, x) if in_place else x
    grad_w = width * c.norm_w if c.full else 0
    partial = LIGER_SM_COUNT * width * 4 + width * 4 if c.full else 0  # `_dW` and `_dW.sum(dim=0)`
    y = tp.op(rows * width * a, (src,), saves=(x, rstd), param_grad=grad_w, bwd_temp=partial)
    tp.drop(rstd)
    if in_place:
        tp.drop(src)
    return y, a


def rotary(tp: Tape, x: int, a: int) -> tuple[int, int]:
    """`liger_rotary_pos_emb`: in place on the projection's output; cos and sin are already alive."""
    return tp.op(0, (x,), alias=x), a


def swiglu(tp: Tape, c, gate: int, up: int, a: int, inter: int) -> int:
    """`LigerSiLUMulFunction.apply(gate, up)`; consumes gate and up. Backward writes into them."""
    src = _inplace_grads(tp, gate, up)
    h = tp.op(c.tokens * inter * a, (src,), saves=(gate, up))
    tp.drop(src, gate, up)
    return h


def swiglu_fused(tp: Tape, c, gate_up: int, a: int, inter: int) -> int:
    """`LigerPhi3SwiGLUMLP`: `gate_up_proj(x).chunk(2)`, both halves made contiguous (one copy each; their
    gradients are concatenated back into one [T, 2I] tensor by the chunk's backward), then the SwiGLU kernel."""
    halves = tp.op(2 * c.tokens * inter * a, (gate_up,))
    tp.drop(gate_up)
    src = _inplace_grads(tp, halves)
    h = tp.op(c.tokens * inter * a, (src,), saves=(halves,))
    tp.drop(src, halves)
    return h


def flce_head(tp: Tape, c, h: int, ha: int) -> int:
    """`lce_forward` with labels (training): `LigerForCausalLMLoss` on the final norm's output h (element size ha;
    the caller ran the norm: `losses.loss_head`). Consumes h."""
    t, h_dim, v = c.tokens, c.hidden, c.vocab
    padded = tp.op(8 * c.batch * (c.seq + 1), grad=False)  # F.pad(labels, (0, 1), value=ignore_index)
    shifted = tp.op(8 * t, (padded,), grad=False)  # labels[..., 1:].contiguous()
    trains = c.full or c.head_trainable
    grad_input = tp.op(t * h_dim * ha, grad=False)
    # grad_weight: `zeros_like(weight)`, kept until backward hands it to the weight's .grad (the tape counts that
    # hand-over as a new .grad while the saved buffer is released: one weight-sized overcount at that node)
    grad_weight = tp.op(v * h_dim * c.lm_head_w, grad=False) if trains else None
    loss_1d = tp.op(t * 4, grad=False)
    target_mask = tp.op(t, (shifted,), grad=False)
    rows = chunk_rows(t, v, h_dim)
    if c.autocast:  # fp32 input under autocast: no `out=` buffer; per chunk the casts and the product
        temp = rows * h_dim * c.compute + v * h_dim * c.compute + rows * v * c.compute + rows * h_dim * c.compute
    elif ha == c.lm_head_w:  # `_can_use_mm_out`: one `logits_storage` buffer for every chunk
        temp = rows * v * ha
    else:  # promoted product per chunk and `grad_logits_chunk @ weight` before the copy into grad_input
        la = max(ha, c.lm_head_w)
        temp = rows * v * la + rows * h_dim * la
    src = _inplace_grads(tp, h)
    loss = tp.op(4, (src,), saves=(grad_input, grad_weight), temp=temp,
                 param_grad=v * h_dim * c.lm_head_w if trains else 0)
    tp.drop(src, grad_input, loss_1d, target_mask)
    if grad_weight is not None:
        tp.drop(grad_weight)
    tp.drop(h, padded, shifted)  # `lce_forward` returns: the norm's output and the labels die
    tp.release_cached()
    return loss
