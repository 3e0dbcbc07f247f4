"""Architecture traits: the hand-written records agree with the module tree transformers builds, and the
meta-device derivation reads the parts of architectures without one (GPT-NeoX, OLMo-2, StarCoder2, Phi-2,
StableLM). The oracle is the real transformers class on the meta device."""

from __future__ import annotations

import dataclasses

import pytest

from vramplan.architecture import traits_of
from vramplan.models import preset_config, spec_from_config
from vramplan.traits import NATIVE_TRAITS, Traits

pytest.importorskip("torch")
pytest.importorskip("transformers")

from vramplan.measure.arch_configs import ARCH_CONFIGS
from vramplan.measure.meta_inventory import traits_from_meta

# a dense preset per native architecture (MoE blocks have no dense MLP to read)
NATIVE_PRESETS = {"llama": "llama3.2-1b", "qwen2": "qwen2.5-0.5b", "qwen3": "qwen3-0.6b", "gemma2": "gemma2-2b",
                  "phi3": "phi3-mini", "mistral": "mistral-7b"}
# what the module tree cannot show: GemmaRMSNorm's (1 + weight) is in its forward, not its type; the attention
# dispatch (`_supports_sdpa`, a window on every layer, the eager masks) and the MoE config keys are class/config facts
NOT_STRUCTURAL = ("native", "gemma_norm", "sdpa", "sliding_window_every_layer", "attention_mask_kinds", "moe",
                  "peft_default_targets", "liger_kernels")  # the last two: library tables keyed by model_type


def _small(cfg: dict) -> dict:
    return {**cfg, "num_hidden_layers": 2}


@pytest.mark.parametrize("model_type", sorted(NATIVE_PRESETS))
def test_native_records_match_the_module_tree(model_type):
    derived = traits_from_meta(_small(preset_config(NATIVE_PRESETS[model_type])))
    written = NATIVE_TRAITS[model_type]
    for f in dataclasses.fields(Traits):
        if f.name not in NOT_STRUCTURAL:
            assert getattr(derived, f.name) == getattr(written, f.name), f.name


def test_fallback_architectures_read_from_the_module_tree():
    neox = traits_from_meta(_small(ARCH_CONFIGS["pythia-1.4b"]))
    assert (neox.norm, neox.norm_bias, neox.layout, neox.parallel_norms) == ("layer", True, "parallel", 2)
    assert (neox.fused_qkv, neox.qkv, neox.o, neox.gated_mlp) == (True, "query_key_value", "dense", False)
    assert neox.rotary_factor == 0.25 and neox.layers_path == "gpt_neox.layers"
    olmo = traits_from_meta(_small(ARCH_CONFIGS["olmo2-7b"]))
    assert (olmo.layout, olmo.qk_norm, olmo.norm) == ("post", "proj", "rms")
    phi = traits_from_meta(_small(ARCH_CONFIGS["phi-2"]))
    assert (phi.layout, phi.parallel_norms, phi.activation, phi.resid_dropout) == ("parallel", 1, "gelu_new", 0.1)
    assert phi.rotary_factor == pytest.approx(0.4)
    sc = traits_from_meta(_small(ARCH_CONFIGS["starcoder2-3b-noattndrop"]))
    assert (sc.layout, sc.up, sc.down, sc.activation) == ("pre", "c_fc", "c_proj", "gelu_pytorch_tanh")


def test_spec_reads_traits_and_defaults_targets_from_them():
    from vramplan.estimator.weights import resolve_targets
    from vramplan.plan import make_plan

    spec = spec_from_config(_small(ARCH_CONFIGS["pythia-1.4b"]), "pythia", "test")
    assert traits_of(spec).fused_qkv
    assert resolve_targets(spec, make_plan(method="lora")) == ("query_key_value",)
    assert resolve_targets(spec, make_plan(method="lora", targets="attention")) == ("query_key_value", "dense")


def test_unsupported_activation_is_a_one_line_error():
    from vramplan.errors import UnsupportedArchitectureError

    cfg = {**_small(ARCH_CONFIGS["stablelm2-1.6b"]), "hidden_act": "relu2"}
    with pytest.raises(UnsupportedArchitectureError, match="relu2"):
        traits_from_meta(cfg)


def test_decoder_layers_not_named_layers_are_found(tmp_path, monkeypatch):
    """GPT-BigCode keeps its blocks in `transformer.h`: each parameter still gets its layer (an FSDP unit each)."""
    from vramplan.measure.meta_inventory import inventory_from_meta

    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(tmp_path))
    cfg = {"model_type": "gpt_bigcode", "n_embd": 256, "n_layer": 3, "n_head": 4, "vocab_size": 1000,
           "n_inner": 1024, "multi_query": True, "bos_token_id": 0, "eos_token_id": 0}
    layers = {t.name: t.layer for t in inventory_from_meta(cfg).tensors}
    assert layers["transformer.h.2.attn.c_attn.weight"] == 2
    assert layers["transformer.wte.weight"] is None
    assert {v for v in layers.values() if v is not None} == {0, 1, 2}


def test_traits_read_instead_of_model_type_names():
    """Gemma 3 computes two rotary tables (one per layer type: `sliding_attention_inv_freq` and
    `full_attention_inv_freq` when its six layers hold both types): the written record says 2 and so do the
    buffers; the v4 expert linears peft maps are MoELayout data (Mixtral w1/w3/w2)."""
    from vramplan.estimator.weights import expert_lora_targets, rotary_embeddings
    from vramplan.plan import make_plan

    gemma3 = {"model_type": "gemma3_text", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 6,
              "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64, "vocab_size": 1000,
              "sliding_window": 64}
    assert traits_from_meta(gemma3).rotary_tables == NATIVE_TRAITS["gemma3_text"].rotary_tables == 2
    assert rotary_embeddings(spec_from_config(gemma3, "g3", "test"))[0] == 2
    assert traits_from_meta(_small(ARCH_CONFIGS["pythia-1.4b"])).rotary_tables == 1
    mixtral = spec_from_config(preset_config("mixtral-8x7b"), "mixtral", "test")
    assert expert_lora_targets(mixtral, make_plan(method="lora", targets="w1,w3")) == (("gate_up_proj",), False)
    assert expert_lora_targets(mixtral, make_plan(method="lora", targets="all-linear")) == (
        ("gate_up_proj", "down_proj"), True)


def test_granite_and_gpt_bigcode_traits():
    """Granite: `residual_multiplier` on the layer, `logits / logits_scaling` in the CausalLM; GPT-BigCode:
    learned positions (no rotary module), gelu_pytorch_tanh from the config class's default, layers under
    transformer.h."""
    granite = traits_from_meta(_small(ARCH_CONFIGS["granite-3.1-2b-noattndrop"]))
    assert granite.residual_multiplier and granite.logit_scale and granite.rotary_factor == 1.0
    bigcode = traits_from_meta({**_small(ARCH_CONFIGS["starcoder-15b-noattndrop"]), "n_layer": 2})
    assert (bigcode.rotary_factor, bigcode.activation, bigcode.layers_path) == (0.0, "gelu_pytorch_tanh",
                                                                               "transformer.h")
    assert not bigcode.residual_multiplier and not bigcode.logit_scale


def test_falcon_is_refused_by_name():
    """Falcon's projections are FalconLinear (an nn.Linear subclass bitsandbytes leaves alone): a one-line error
    naming it, never a Llama estimate."""
    from vramplan.errors import UnsupportedArchitectureError

    cfg = {"model_type": "falcon", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_kv_heads": 2, "vocab_size": 1000, "new_decoder_architecture": True}
    with pytest.raises(UnsupportedArchitectureError, match="FalconLinear"):
        traits_from_meta(cfg)
