"""A frozen LLM.int8 linear (`load_in_8bit`: bitsandbytes `Linear8bitLt`) replayed on the tape; `programs.linear`
calls it for every decoder linear of an 8-bit base, then adds the LoRA path as for any base."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vramplan.estimator.programs import Ctx
    from vramplan.estimator.tape import Tape


def int8_linear(tp: Tape, c: Ctx, x: int, a: int, n_in: int, n_out: int) -> int:
    """A frozen `Linear8bitLt` (has_fp16_weights=False, threshold 6.0): its output, in the input's dtype.

    CUDA, `MatMul8bitLt.forward` with B frozen (the fast path): `A.to(float16)` (a copy unless A is fp16);
    `int8_vectorwise_quant` (backends/cuda/ops.py): int8 CA [t, in], fp32 SCA [t], and for the outlier test
    `A.abs() >= threshold` (an fp16 abs, then the bool mask, alive until it returns); `int8_mixed_scaled_mm` ->
    `int8_scaled_mm`: `int8_linear_matmul` makes an int32 [t, out], `int8_mm_dequant` an fp16 [t, out], then
    `.to(A.dtype)` (a third copy unless A is fp16). It keeps `ctx.tensors = (CAt=None, subA, A)` when A requires
    grad: the input itself, held as a ctx attribute. Backward: `state.CB.to(A.dtype, copy=True)
    .mul_(SCB.unsqueeze(1).mul(1/127))`, the whole weight dequantized in A's dtype, then `grad_output @ CB`.
    CPU (`bnb.matmul` picks `MatMul8bitFp` when training there): the same dequantized weight in the forward,
    `F.linear(A, CB)`, `ctx.A = A`; the same backward.
    Left out: subA, the input's outlier columns (`A[:, outlier_cols]`, [t, k]: k depends on the data, a few
    columns in the released models' hidden states), and the outlier add-back (`output.addmm(subA, subB)`), whose
    transient [t, out] stays below the int32 peak."""
    t, w = c.tokens, n_out * n_in
    bwd = w * a + n_out * 4  # the dequantized weight and the scaled row statistics
    fp16 = c.int8_fp16 and a == 2  # A is fp16 (a bf16 or fp32 A is cast, and the fp16 product cast back)
    if not c.cuda:
        out = tp.op(t * n_out * a, (x,), saves=(x,), temp=w * a + n_out * 4, bwd_temp=bwd)
    else:
        cast = 0 if fp16 else t * n_in * 2
        ca = tp.op(t * n_in + t * 4, (x,), grad=False, temp=cast + 3 * t * n_in)  # CA, SCA; abs + mask
        mm = t * n_out * 4 + (0 if fp16 else t * n_out * 2)  # int32 product, fp16 dequant
        out = tp.op(t * n_out * a, (x, ca), saves=(x,), temp=mm, bwd_temp=bwd)
        tp.drop(ca)
    if tp.checkpointing and c.int8_ctx_keeps and tp.grad[x]:  # the ctx attribute outlives the checkpoint
        tp.refs[x] += 1
    return out
