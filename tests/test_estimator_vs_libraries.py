"""Each modelled byte checked against the real library on CPU at small size.

Sources: bitsandbytes 0.50 `functional.quantize_4bit` and `optim`, torch `optim.AdamW`/`SGD`, peft
`get_peft_model` / `prepare_model_for_kbit_training`, transformers `Adafactor`.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from vramplan.estimator.optimizer import optimizer_memory  # noqa: E402
from vramplan.estimator.weights import (  # noqa: E402
    CODE_4BIT_BYTES,
    DYNAMIC_CODE_BYTES,
    quantized_layer_bytes,
    static_memory,
)
from vramplan.models import spec_from_config  # noqa: E402
from vramplan.plan import make_plan  # noqa: E402

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _storages(*tensors) -> dict[int, int]:
    out = {}
    for t in tensors:
        if t is not None:
            s = t.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("shape", [(256, 64), (11008 // 16, 4096 // 16), (96, 200)])
def test_quantize_4bit_storage(quant, double_quant, shape):
    import bitsandbytes.functional as F

    w = torch.randn(shape, dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type=quant)
    per_layer = _storages(packed, state.absmax, state.code, state.offset)
    if double_quant:  # state2 carries its own copy of the 256-entry dynamic code (code.to(device, copy=True))
        per_layer.update(_storages(state.state2.absmax, state.state2.code))
    n = w.numel()
    w_b, c_b, dq_b = quantized_layer_bytes(n, 64, double_quant)
    assert packed.untyped_storage().nbytes() == w_b
    assert state.code.untyped_storage().nbytes() == CODE_4BIT_BYTES
    assert sum(per_layer.values()) == w_b + c_b + dq_b
    if double_quant:
        assert state.state2.code.untyped_storage().nbytes() == DYNAMIC_CODE_BYTES


def _adapter_params(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def test_peft_adapters_fp32_and_counts():
    cfg = transformers.AutoConfig.for_model(**TINY)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)
    params = _adapter_params(model)
    assert {p.dtype for _, p in params} == {torch.float32}  # autocast_adapter_dtype upcasts bf16 adapters
    spec = spec_from_config(TINY, "tiny", "test")
    st = static_memory(spec, make_plan(method="lora", rank=4, targets="q_proj,v_proj,down_proj"))
    assert sum(p.numel() for _, p in params) * 4 == st.lora_adapters
    assert sorted(p.numel() for _, p in params) == sorted(st.trainable_numels)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    # the rotary embedding's fp32 inv_freq / original_inv_freq buffers sit with the frozen weights
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert {b.dtype for b in model.buffers()} == {torch.float32}
    assert frozen + buffers == st.base_weights


def test_prepare_model_for_kbit_training_upcasts_non_4bit_weights_to_fp32():
    """peft casts every fp16/bf16 parameter that is not Params4bit to fp32: embeddings, norms, lm_head."""
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert

    cfg = transformers.AutoConfig.for_model(**TINY)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    qcfg = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_compute_dtype=torch.bfloat16)
    skip = get_keys_to_not_convert(model)
    qmodel = replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=qcfg)
    quantized = [n for n, m in qmodel.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    spec = spec_from_config(TINY, "tiny", "test")
    assert len(quantized) == sum(g.count for g in spec.inventory.linear_groups.values())
    assert "lm_head" not in quantized
    # the non-quantized parameters, as loaded (bf16) and after peft's upcast (fp32)
    rest = {n: p for n, p in qmodel.named_parameters() if not n.endswith(tuple(f"{q}.weight" for q in quantized))}
    rest = {n: p for n, p in rest.items() if p.device.type != "meta"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model2 = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        peft.prepare_model_for_kbit_training(model2, use_gradient_checkpointing=False)
    # a model without 4-bit layers: every parameter is upcast
    assert {p.dtype for p in model2.parameters()} == {torch.float32}
    qlora = static_memory(spec, make_plan(method="qlora"))
    non_q = spec.inventory.total_numel - sum(g.weight_numel for g in spec.inventory.linear_groups.values())
    buffers = sum(b.numel() * b.element_size() for b in model2.buffers())  # fp32 rotary buffers, never cast
    assert qlora.base_weights == non_q * 4 + buffers
    assert static_memory(spec, make_plan(method="qlora", kbit_upcast=False)).base_weights == non_q * 2 + buffers
    assert rest  # the non-quantized ones exist


def _state_bytes(opt) -> int:
    seen = {}
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.dim() > 0 or torch.is_tensor(v) and v.numel() == 1 and v.device.type != "cpu":
                s = v.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "adamw_8bit": lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3),
    "paged_adamw_8bit": lambda ps: bnb.optim.PagedAdamW8bit(ps, lr=1e-3),
    "paged_adamw_32bit": lambda ps: bnb.optim.PagedAdamW32bit(ps, lr=1e-3),
    "lion_8bit": lambda ps: bnb.optim.Lion8bit(ps, lr=1e-3),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9),
}


# bitsandbytes states are fp32/uint8 whatever the parameter dtype, so bf16 parameters matter for torch's only
CASES = [(n, torch.float32) for n in sorted(OPTIMIZERS)] + [("adamw", torch.bfloat16), ("sgd_momentum", torch.bfloat16)]


@pytest.mark.parametrize("name, dtype", CASES)
def test_optimizer_states_after_one_step(name, dtype):
    shapes = [(8, 64), (64, 8), (300, 400), (64,)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes]
    opt = OPTIMIZERS[name](params)
    for p in params:
        p.grad = torch.randn_like(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    numels = tuple(p.numel() for p in params)
    est = optimizer_memory(make_plan(method="full", optimizer=name), numels, dtype.itemsize)
    # on CPU bitsandbytes does not page: every state lands in ordinary memory
    assert _state_bytes(opt) == est.states_bytes + est.paged_bytes


def test_paged_states_go_to_managed_memory_only_for_large_tensors():
    est = optimizer_memory(make_plan(optimizer="paged_adamw_8bit"), (8 * 4096, 4096 * 64), 4)
    blocks = -(-4096 * 64 // 256)
    assert est.paged_bytes == 2 * 4096 * 64  # >= 1e5 elements: uint8 states paged
    assert est.states_bytes == 2 * 8 * 4096 + 2 * (8 * 4096 // 256) * 4 + 2 * blocks * 4 + 2 * 1024
