"""measure_step against ground facts derived by hand from the library code (expected_bytes.py cites each one).

The runs are traced (FakeTensorMode, fast); test_trace_matches_real.py shows traced == real to the byte.
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from expected_bytes import llama_linears, lora_bytes, optimizer_state_bytes, qlora_load_bytes  # noqa: E402

from vramplan.errors import MeasurementError  # noqa: E402
from vramplan.measure.build import resolve_targets  # noqa: E402
from vramplan.measure.trainer import PHASES, MeasuredStep, measure_step  # noqa: E402
from vramplan.plan import make_plan  # noqa: E402

TINY = dict(
    model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=256,
)
B, S = 2, 32


def traced(**options):
    return measure_step(TINY, make_plan(batch=B, seq=S, **options), trace=True)


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("upcast", [True, False])
def test_qlora_load_is_bitsandbytes_layout_plus_peft_upcast(double_quant, upcast):
    got = traced(method="qlora", double_quant=double_quant, kbit_upcast=upcast)
    want = qlora_load_bytes(TINY, double_quant=double_quant, upcast=upcast, targets=["q_proj", "v_proj"])
    assert got.load_bytes == want


def test_qlora_blocksize_sets_the_absmax_count():
    got = traced(method="qlora", quant_blocksize=256, double_quant=False)
    want = qlora_load_bytes(TINY, double_quant=False, upcast=True, targets=["q_proj", "v_proj"], blocksize=256)
    assert got.load_bytes == want


def test_prepare_model_for_kbit_training_upcasts_dense_weights_to_fp32():
    def dtype_of(step, suffix):
        (hit,) = [a for a in step.peak_snapshot if a.name.endswith(suffix)]
        return hit.dtype

    for upcast, dtype in [(True, "float32"), (False, "bfloat16")]:
        step = traced(method="qlora", kbit_upcast=upcast)
        assert dtype_of(step, "embed_tokens.weight") == dtype
        assert dtype_of(step, "lm_head.weight") == dtype
        assert dtype_of(step, "layers.0.self_attn.q_proj.base_layer.weight") == "uint8"


def _dense_shapes(cfg):
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    per_layer = list(llama_linears(cfg).values()) + [(h,), (h,)]
    return [(v, h)] + per_layer * cfg["num_hidden_layers"] + [(h,), (v, h)]


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit", "lion_8bit",
                                       "paged_adamw_32bit", "adafactor", "sgd", "sgd_momentum"])
def test_optimizer_state_bytes(optimizer):
    """Full fine-tuning in bf16: state = after the step - before step 1 (gradients are freed by zero_grad)."""
    step = traced(method="full", optimizer=optimizer)
    assert step.after_step_bytes - step.load_bytes == optimizer_state_bytes(optimizer, _dense_shapes(TINY), 2)


def test_default_targets_are_peft_defaults_for_the_architecture():
    step = traced(method="lora", targets="default", optimizer="sgd")  # peft maps llama -> q_proj, v_proj
    assert 4 * step.trainable_params == lora_bytes(TINY, ["q_proj", "v_proj"], 8)


def test_attention_targets_follow_the_architecture():
    from transformers import AutoConfig, AutoModelForCausalLM

    for model_type, want in [("llama", ["q_proj", "k_proj", "v_proj", "o_proj"]), ("phi3", ["o_proj", "qkv_proj"])]:
        with torch.device("meta"):
            cfg = AutoConfig.for_model(**dict(TINY, model_type=model_type, pad_token_id=0, eos_token_id=2))
            model = AutoModelForCausalLM.from_config(cfg)
        assert sorted(resolve_targets(model, "attention")) == sorted(want)


def test_snapshots_add_up_to_their_phase_peaks():
    step = traced(method="qlora", lora_dropout=0.1)
    for phase in PHASES:
        assert sum(a.nbytes for a in step.snapshots[phase]) == getattr(step, f"{phase}_peak_bytes")
    assert step.peak_bytes == max(step.forward_peak_bytes, step.backward_peak_bytes, step.optimizer_peak_bytes)
    assert step.peak_snapshot is step.snapshots[step.peak_phase]


def test_a_step_reads_back_from_its_json():
    """Gloo ranks hand their steps to the parent as JSON (vramplan.measure.distributed): the same step comes back."""
    step = traced(method="lora")
    text = json.dumps(step.to_dict())
    assert MeasuredStep.from_dict(json.loads(text)) == step
    assert json.loads(text)["peak_bytes"] == step.peak_bytes and step.peak_snapshot


def test_loss_upcasts_logits_to_fp32():
    """transformers ForCausalLMLoss: `logits = logits.float()` before cross-entropy."""
    step = traced(method="lora", grad_ckpt=False)
    copies = [a for a in step.snapshots["forward"] if a.op == "aten._to_copy" and a.shape == (B, S, 256)]
    assert [a.dtype for a in copies] == ["float32"]


def test_checkpointing_keeps_one_hidden_state_per_layer():
    """Non-reentrant checkpointing of each decoder layer saves only its input: the embedding output and the
    outputs of layers 0..L-2 (the last layer's output goes into the final norm, which saves an fp32 copy)."""
    step = traced(method="lora", grad_ckpt=True)
    kept = [a for a in step.snapshots["forward"] if a.phase == "forward" and a.shape == (B, S, 64)
            and (a.module.endswith("embed_tokens") or a.module.rsplit(".", 1)[-1].isdigit())]
    assert len(kept) == TINY["num_hidden_layers"]


def test_cpu_dropout_keeps_a_float_mask_in_the_input_dtype():
    """On CPU `aten.dropout` is not fused: the mask is `empty_like(input).bernoulli_()` (fp32 here, since peft
    casts the LoRA input to the fp32 adapter dtype); CUDA's fused `native_dropout` keeps a bool mask."""
    step = traced(method="lora", grad_ckpt=False, lora_dropout=0.1)
    masks = [a for a in step.snapshots["forward"] if a.op == "aten.empty_like" and "lora_dropout" in a.module]
    assert masks and all(a.dtype == "float32" and a.shape == (B, S, 64) for a in masks)


@pytest.mark.parametrize(("config", "options", "message"), [
    (TINY, dict(attn="flash_attention_2"), "flash_attention_2"),
    ({"hidden_size": 8}, {}, "model_type"),
    (dict(TINY, model_type="lama"), {}, "did you mean llama"),
    (TINY, dict(method="lora", targets="nope_proj"), "targets"),
])
def test_clean_errors(config, options, message):
    with pytest.raises(MeasurementError, match=message):
        measure_step(config, make_plan(seq=8, **options), trace=True)


def test_cuda_without_cuda_is_a_clean_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(MeasurementError, match="cuda"):
        measure_step(TINY, make_plan(seq=8), device="cuda")


def test_grad_accumulation_keeps_gradients_through_the_next_forward():
    """With grad_accum=2 the second micro-batch's forward runs with the first one's gradients (bf16, one per
    parameter) and both micro-batches (input_ids + labels, int64) alive."""
    one, two = traced(method="full", grad_accum=1), traced(method="full", grad_accum=2)
    param_bytes = 2 * sum(math.prod(shape) for shape in _dense_shapes(TINY))
    assert two.forward_peak_bytes - one.forward_peak_bytes == param_bytes + 2 * B * S * 8


def test_the_callers_rng_is_left_alone():
    before = torch.get_rng_state()
    measure_step(TINY, make_plan(method="lora", seq=8), trace=False, seed=123)
    assert torch.equal(torch.get_rng_state(), before)
