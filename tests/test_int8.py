"""LoRA over an LLM.int8 base (`load_in_8bit`), pinned to bitsandbytes and transformers at small size.

The oracle is the real library: the model transformers' 8-bit quantizer builds (`Int8Params`: int8 CB, fp32
SCB per row), what `MatMul8bitLt` / `MatMul8bitFp` keep for backward (a ctx attribute, which non-reentrant
checkpointing does not drop) and what their backward materialises. The CUDA kernels' own temporaries (the
int32 product and fp16 dequant inside `int8_scaled_mm`, the outlier mask) cannot run here: they are modelled from
bitsandbytes' backends/cuda/ops.py and not checked by these tests.
"""

from __future__ import annotations

import pytest

from vramplan.errors import PlanError
from vramplan.models import preset_config, spec_from_config
from vramplan.plan import make_plan

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

SMALL = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192}


def _cfg() -> dict:
    return {**preset_config("llama3.1-8b"), **SMALL}


def _frozen_int8(n_in: int = 64, n_out: int = 48, bias: bool = False):
    """A `Linear8bitLt` as transformers leaves it after loading, its state moved as its first forward does."""
    lin = bnb.nn.Linear8bitLt(n_in, n_out, bias=bias, has_fp16_weights=False, threshold=6.0).to("cpu")
    lin.init_8bit_state()
    return lin


def test_plan_takes_8bit_for_lora_only():
    plan = make_plan(method="lora", load_in_8bit=True)
    assert plan.kbit and plan.kbit_upcast  # peft prepare_model_for_kbit_training: `is_loaded_in_8bit`
    assert make_plan(method="lora", load_in_8bit=True, trainer="trl-sft").kbit_upcast is False
    assert make_plan(method="lora").kbit_upcast is None
    for bad in ({"method": "qlora"}, {"method": "full"}, {"method": "lora", "gpus": 2},
                {"method": "lora", "use_dora": True}):
        with pytest.raises(PlanError, match="8-bit|8bit"):
            make_plan(load_in_8bit=True, **bad)
    with pytest.raises(PlanError, match="kbit-upcast"):
        make_plan(method="lora", kbit_upcast=False)


def test_storage_matches_the_8bit_quantizer():
    """transformers' Bnb8BitHfQuantizer: every decoder nn.Linear an int8 CB plus an fp32 SCB per output row;
    everything else (embeddings, norms, lm_head) stays float, fp32 after the kbit upcast."""
    from peft import prepare_model_for_kbit_training

    from vramplan.estimator.weights import static_memory
    from vramplan.measure.build import build_model

    cfg = _cfg()
    plan = make_plan(method="lora", load_in_8bit=True)
    model = prepare_model_for_kbit_training(build_model(cfg, plan, device="cpu", trace=False),
                                            use_gradient_checkpointing=False)
    int8 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    cb = sum(m.weight.numel() * m.weight.element_size() for m in int8)
    scb = sum(m.weight.SCB.numel() * m.weight.SCB.element_size() for m in int8)
    rest = sum(p.numel() * p.element_size() for p in model.parameters() if p.dtype != torch.int8)
    rest += sum(b.numel() * b.element_size() for b in model.buffers())
    assert {m.weight.dtype for m in int8} == {torch.int8} and {m.weight.SCB.dtype for m in int8} == {torch.float32}
    st = static_memory(spec_from_config(cfg, "tiny", "test"), plan)
    assert (st.quantized_weights, st.quant_constants, st.double_quant_constants) == (cb, scb, 0)
    assert st.base_weights == rest


def test_matmul8bitlt_keeps_its_input_as_a_ctx_attribute():
    """Frozen weight, input that needs grad: `ctx.tensors = (CAt, subA, A)` with CAt None (no column-wise
    quantization without a weight gradient) and A the input's own storage."""
    lin = _frozen_int8()
    x = torch.randn(10, 64, dtype=torch.float16, requires_grad=True)
    y = bnb.autograd._functions.MatMul8bitLt.apply(x, lin.weight, None, None, lin.state)
    cat, sub_a, a = y.grad_fn.tensors
    assert cat is None and sub_a.numel() == 0  # randn stays below the 6.0 outlier threshold
    assert a.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


@pytest.mark.parametrize(("reentrant", "kept"), [(False, True), (True, False)])
def test_checkpointing_does_not_drop_the_kept_input(reentrant, kept):
    """torch.utils.checkpoint's non-reentrant variant drops *saved* tensors (pack hooks); a ctx attribute is
    no saved tensor, so the forward still holds the 8-bit linear's input. The reentrant variant runs the forward
    under no_grad: no node, nothing kept (what `Ctx.int8_ctx_keeps` models)."""
    import weakref

    from torch.utils.checkpoint import checkpoint

    lin = _frozen_int8()
    x = torch.randn(10, 64, dtype=torch.float16, requires_grad=True)
    refs = []

    def block(h):
        inner = h * 2  # a tensor only the checkpointed region makes
        refs.append(weakref.ref(inner))
        return bnb.autograd._functions.MatMul8bitLt.apply(inner, lin.weight, None, None, lin.state)

    y = checkpoint(block, x, use_reentrant=reentrant)
    assert (refs[0]() is not None) is kept
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backward_dequantizes_the_whole_weight_in_the_input_dtype(dtype):
    """`state.CB.to(ctx.dtype_A, copy=True).mul_(SCB.unsqueeze(1).mul(1/127))`: an [out, in] copy in A's dtype
    (and an [out, 1] fp32 scale), both paths; the CPU path (`MatMul8bitFp`) makes the same copy in forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    made: list[tuple[tuple[int, ...], torch.dtype]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default:
                made.append((tuple(out.shape), out.dtype))
            return out

    from bitsandbytes.autograd._functions import MatMul8bitFp, MatMul8bitLt

    for fn in (MatMul8bitLt, MatMul8bitFp):
        lin = _frozen_int8()
        x = torch.randn(10, 64, dtype=dtype, requires_grad=True)
        y = fn.apply(x, lin.weight, None, None, lin.state)
        made.clear()
        with Record():
            y.backward(torch.ones_like(y))
        assert (48, 64) in [s for s, d in made if d == dtype], (fn.__name__, made)


def test_int8_program_keeps_the_input_only_where_torch_does():
    """The tape: a checkpointed forward keeps the input of an 8-bit linear when `int8_ctx_keeps` (non-reentrant),
    and nothing otherwise; without checkpointing the node saves it like any saved tensor."""
    from dataclasses import replace

    from vramplan.estimator.int8 import int8_linear
    from vramplan.estimator.programs import Ctx
    from vramplan.estimator.tape import Tape

    c = Ctx(tokens=512, batch=1, seq=512, hidden=256, heads=4, kv_heads=2, head_dim=64, vocab=8192, norm_w=4,
            linear_w=2, compute=2, quantized=False, lora=frozenset(), rank=8, dropout=False, full=False,
            gemma_norm=False, attn="sdpa", lm_head_w=4, int8=True)
    x_bytes = 512 * 256 * 2
    for keeps, ckpt, live in ((True, True, x_bytes), (False, True, 0), (True, False, x_bytes)):
        tp = Tape(checkpointing=ckpt)
        x = tp.new(x_bytes, True)
        y = int8_linear(tp, replace(c, int8_ctx_keeps=keeps), x, 2, 256, 128)
        tp.drop(x, y)
        assert tp.live == live, (keeps, ckpt)
    # CUDA forward peak: during the quantization CA [t, in] int8 + SCA [t] fp32 beside the fp16 copy of A, its
    # abs and the bool outlier mask; during the product CA + SCA beside the int32 [t, out], the fp16 dequant and
    # the bf16 output
    t, n_in, n_out = 512, 256, 128
    tp = Tape()
    x = tp.new(x_bytes, True)
    int8_linear(tp, c, x, 2, n_in, n_out)
    quant = t * n_in * (1 + 2 + 2 + 1) + t * 4
    product = t * n_in + t * 4 + t * n_out * (4 + 2 + 2)
    assert tp.peak == x_bytes + max(quant, product)
