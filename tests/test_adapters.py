"""Adapter byte rules pinned to the real peft at small size (the oracle is peft's own model, never the
estimator)."""

from __future__ import annotations

import pytest

from vramplan.models import preset_config, spec_from_config
from vramplan.plan import make_plan

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def _tiny_moe(model_type: str) -> dict:
    base = preset_config("qwen3-30b-a3b" if model_type == "qwen3_moe" else "mixtral-8x7b")
    small = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 128, "head_dim": 16}
    if model_type == "qwen3_moe":
        small.update(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    else:
        small.update(num_local_experts=4, num_experts_per_tok=2)
    return {**base, **small}


def _peft_trainable(cfg: dict, targets) -> list[int]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    return sorted(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("model_type", "targets"), [
    ("qwen3_moe", "all-linear"),
    ("qwen3_moe", "q_proj,v_proj,gate_proj,up_proj,down_proj"),
    ("mixtral", "all-linear"),
])
def test_lora_on_fused_experts_matches_peft(model_type, targets):
    """peft 0.21 moves MoE expert targets to the fused 3-D parameters (gate_up_proj with rank 2r) and the router."""
    from vramplan.estimator.weights import static_memory

    cfg = _tiny_moe(model_type)
    spec = spec_from_config(cfg, "tiny", "test")
    plan = make_plan(method="lora", rank=8, targets=targets)
    expected = _peft_trainable(cfg, targets.split(",") if "," in targets else targets)
    assert sorted(static_memory(spec, plan).trainable_numels) == expected


@pytest.mark.parametrize("targets", ["default", "all-linear"])
def test_dora_magnitude_vectors_match_peft(targets):
    """DoRA adds one fp32 magnitude vector per wrapped linear, as long as its output (peft
    `DoraLinearLayer.update_layer`); qwen2 has biased q/k/v projections."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from vramplan.estimator.weights import static_memory

    cfg = {**preset_config("qwen2.5-0.5b"), "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    resolved = ["q_proj", "v_proj"] if targets == "default" else "all-linear"
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=resolved, use_dora=True))
    magnitudes = [p for n, p in peft_model.named_parameters() if "lora_magnitude_vector" in n]
    assert {p.dtype for p in magnitudes} == {torch.float32}
    expected = sorted(p.numel() for p in peft_model.parameters() if p.requires_grad)
    spec = spec_from_config(cfg, "tiny", "test")
    st = static_memory(spec, make_plan(method="lora", rank=8, targets=targets, use_dora=True))
    assert sorted(st.trainable_numels) == expected
    assert st.trainable_dtype_bytes == 4


def test_dora_is_refused_for_full_fine_tuning():
    from vramplan.errors import PlanError

    with pytest.raises(PlanError, match="dora"):
        make_plan(method="full", use_dora=True)


def test_moe_qlora_says_the_experts_stay_unquantized():
    from vramplan.api import estimate
    from vramplan.models import resolve_model

    mixtral = resolve_model("mixtral-8x7b")
    notes = estimate(mixtral, make_plan(method="qlora")).notes
    assert len(notes) == 1 and "fp32" in notes[0] and "transformers 4" in notes[0]
    assert "bf16" in estimate(mixtral, make_plan(method="qlora", kbit_upcast=False)).notes[0]
    assert estimate(mixtral, make_plan(method="lora")).notes == ()
    assert estimate(resolve_model("llama3.2-1b"), make_plan(method="qlora")).notes == ()


def test_trainable_tokens_match_peft():
    """`trainable_token_indices`: an fp32 delta of the chosen rows (trainable) and a copy of the original rows
    (a buffer, fp32 like the adapters), as peft's TrainableTokensLayer.update_layer makes them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from vramplan.estimator.weights import static_memory

    cfg = {**preset_config("llama3.1-8b"), "num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 96,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    before = sum(b.numel() * b.element_size() for b in model.buffers())
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                                  trainable_token_indices=list(range(5))))
    deltas = [p for n, p in peft_model.named_parameters() if "trainable_tokens_delta" in n]
    assert [(tuple(p.shape), p.dtype) for p in deltas] == [((5, 64), torch.float32)]
    added = sum(b.numel() * b.element_size() for b in peft_model.buffers()) - before
    spec = spec_from_config(cfg, "tiny", "test")
    plan = make_plan(method="lora", rank=8, trainable_tokens=5)
    no_tokens = static_memory(spec, make_plan(method="lora", rank=8))
    st = static_memory(spec, plan)
    assert sorted(st.trainable_numels) == sorted(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert st.base_weights - no_tokens.base_weights == added == 5 * 64 * 4  # fp32, like the adapters
