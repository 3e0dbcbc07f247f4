"""DoRA (`LoraConfig(use_dora=True)`): what peft 0.21's `DoraLinearLayer.forward` (tuners/lora/dora.py) allocates.

Per wrapped linear and forward, on top of the base layer's result (x already cast to the adapters' fp32):
- `get_lora_weight`: `lora_B(lora_A(eye(in))).T`: an in x in fp32 identity, in x r, then the whole in x out
  product in fp32 (its graph dies with it: only `.detach()` is used);
- `dequantize_module_weight(base_layer).to(x.dtype)`: an fp32 copy of the base weight (a 4-bit weight is
  dequantized first, `dequantize_4bit` in QuantState.dtype);
- `get_weight_norm`: `weight + scaling * lora_weight` (two fp32 weight-size temporaries), `linalg.norm(dim=1)`;
- `mag_norm_scale = magnitude / weight_norm` ([out] fp32; the magnitude vector is the trainable parameter);
- `lora_result = lora_B(lora_A(x))`; with dropout the base result is recomputed on the dropped input,
  `F.linear(x, weight)`, which saves the fp32 weight copy for the input's gradient;
- `(mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling`: fp32 products of the output's
  size; the first saves the base result, the second the LoRA result.
The two weight-size fp32 tensors live until the DoRA forward returns (the peak), one more with dropout until
backward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vramplan.estimator.programs import Ctx
    from vramplan.estimator.tape import Tape


def dora_delta(tp: Tape, c: Ctx, res: int, res_a: int, xa: int, n_in: int, n_out: int, dropped: bool,
               bias: bool) -> int:
    """The DoRA term added to the base result `res` (returned fp32, output-sized). Consumes xa. Without
    dropout the base result is reused, less the layer's bias when it has one (`base_result - bias`: a copy)."""
    t, r, w = c.tokens, c.rank, n_in * n_out
    eye = tp.op(n_in * n_in * 4, grad=False)
    ea = tp.op(n_in * r * 4, (eye,), grad=True)
    lw = tp.op(w * 4, (ea,))
    tp.drop(eye, ea)
    w32 = tp.op(w * 4, grad=False, temp=w * c.quant_w if c.quantized else 0)
    norm = tp.op(n_out * 4, grad=False, temp=2 * w * 4)
    scale = tp.op(n_out * 4, (norm,), saves=(norm,), grad=True, param_grad=n_out * 4)
    tp.drop(norm)
    ha = tp.op(t * r * 4, (xa,), saves=(xa,), grad=True, param_grad=r * n_in * 4)
    hb = tp.op(t * n_out * 4, (ha,), saves=(ha,), grad=True, param_grad=n_out * r * 4)
    tp.drop(ha)
    if dropped:
        base = tp.op(t * n_out * 4, (xa, w32), saves=(w32,))
    elif bias:
        base = tp.op(t * n_out * res_a, (res,))
    else:
        base = res
        tp.refs[res] += 1
    tp.drop(xa)
    m1 = tp.op(n_out * 4, (scale,))
    p1 = tp.op(t * n_out * 4, (m1, base), saves=(m1, base))
    tp.drop(m1, base)
    p2 = tp.op(t * n_out * 4, (scale, hb), saves=(scale, hb))
    tp.drop(scale, hb)
    p3 = tp.op(t * n_out * 4, (p2,))
    tp.drop(p2)
    out = tp.op(t * n_out * 4, (p1, p3))
    tp.drop(p1, p3, lw, w32)
    return out
