"""build_model's QLoRA model is what `from_pretrained(..., quantization_config=BitsAndBytesConfig(...))` loads.

Source of truth: a tiny random llama saved with `save_pretrained` and loaded back 4-bit on CPU through
transformers' real loading path. Every parameter, buffer and 4-bit QuantState tensor must agree in name,
class, shape, dtype and requires_grad, with the same quantization settings; the traced build too.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from vramplan.measure.build import bnb_config, build_model, torch_dtype  # noqa: E402
from vramplan.measure.tracing import fake_session, warm_caches  # noqa: E402
from vramplan.plan import make_plan  # noqa: E402

TINY = dict(
    model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=256, attention_bias=True,
)


def inventory(model) -> list[tuple]:
    rows = []
    for name, param in model.named_parameters():
        rows.append((name, tuple(param.shape), param.dtype, param.requires_grad))
        state = getattr(param, "quant_state", None)
        if state is not None:
            rows.append((name, state.quant_type, state.blocksize, state.dtype, tuple(state.shape)))
            tensors = {"absmax": state.absmax, "code": state.code}
            if state.nested:
                tensors |= {"offset": state.offset, "absmax2": state.state2.absmax, "code2": state.state2.code}
            rows += [(f"{name}.{k}", tuple(t.shape), t.dtype) for k, t in tensors.items()]
    rows += [(name, tuple(b.shape), b.dtype) for name, b in model.named_buffers()]
    linear4 = [(n, m.compute_dtype, m.quant_storage) for n, m in model.named_modules()
               if type(m).__name__ == "Linear4bit"]
    return rows + linear4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    cfg = transformers.AutoConfig.for_model(**TINY)
    transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(), dict(double_quant=False, quant="fp4"), dict(param_dtype="fp16")])
def test_build_matches_from_pretrained_4bit(checkpoint, options):
    plan = make_plan(method="qlora", **options)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch_dtype(plan.param_dtype), quantization_config=bnb_config(plan), device_map="cpu")
    want = inventory(loaded)
    warm_caches()
    assert inventory(build_model(TINY, plan, device="cpu", trace=False)) == want
    with fake_session():
        traced = build_model(TINY, plan, device="cpu", trace=True)
        assert inventory(traced) == want
        assert traced.is_loaded_in_4bit and traced.hf_quantizer.quantization_config.bnb_4bit_quant_type == plan.quant


def test_lm_head_stays_dense_and_every_other_linear_is_4bit():
    """transformers' get_keys_to_not_convert keeps the output embedding (and tied weights) un-quantized."""
    warm_caches()  # imports and bitsandbytes' map cache made outside any FakeTensorMode (else they turn fake)
    with FakeTensorMode(), fake_session():
        model = build_model(TINY, make_plan(method="qlora"), device="cpu", trace=True)
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert kinds.pop("lm_head") == "Linear"
    assert set(kinds.values()) == {"Linear4bit"} and len(kinds) == 7 * TINY["num_hidden_layers"]


def test_fused_moe_experts_stay_dense_under_4bit():
    """transformers 5 stores MoE experts as fused 3-D parameters (`MixtralExperts.gate_up_proj`, `down_proj`),
    not nn.Linear, so replace_with_bnb_linear leaves them in the checkpoint dtype (from_pretrained too);
    peft's prepare_model_for_kbit_training would then upcast them to fp32."""
    config = dict(TINY, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, attention_bias=False)
    with fake_session():
        model = build_model(config, make_plan(method="qlora"), device="cpu", trace=True)
    experts = {n: (p.dtype, p.dim()) for n, p in model.named_parameters() if ".experts." in n}
    assert experts and set(experts.values()) == {(torch.bfloat16, 3)}
