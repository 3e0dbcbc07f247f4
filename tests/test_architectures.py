"""Architecture- and kernel-level byte rules that no CPU trace can check, pinned to the libraries' sources."""

from __future__ import annotations

from vramplan.api import estimate
from vramplan.estimator.programs import flash_attn_backward_bytes
from vramplan.models import resolve_model
from vramplan.plan import make_plan


def test_flash_attn_backward_workspace_follows_mha_bwd():
    """flash-attn 2.x csrc/flash_attn/flash_api.cpp `mha_bwd`: softmax_d [b, h, round128(s)] fp32, dq_accum
    [b, round128(s), h, round32(d)] fp32, GQA dk/dv_expanded [b, s, h, d] in q's dtype (Llama-3.1-8B shapes)."""
    b, s, h, kv, d = 2, 1000, 32, 8, 128
    softmax_d = b * h * 1024 * 4
    dq_accum = b * 1024 * h * 128 * 4
    expanded = 2 * b * s * h * d * 2
    assert flash_attn_backward_bytes(b, s, h, kv, d, 2) == softmax_d + dq_accum + expanded
    assert flash_attn_backward_bytes(b, s, h, h, d, 2) == softmax_d + dq_accum  # MHA: dk/dv written in place
    assert flash_attn_backward_bytes(1, 128, 8, 8, 200, 2) == 8 * 128 * 4 + 128 * 8 * 256 * 4  # d > 128: x64


def test_flash_attention_2_costs_its_backward_workspace_over_sdpa():
    model = resolve_model("llama3.1-8b")
    sdpa = estimate(model, make_plan(method="lora", grad_ckpt=False, seq=2048))
    flash = estimate(model, make_plan(method="lora", grad_ckpt=False, seq=2048, attn="flash_attention_2"))
    assert flash.phases["forward"] > sdpa.phases["forward"]  # + 16 B rng_state per layer
    assert flash.phases["forward"] - sdpa.phases["forward"] < 32 * 64
    assert flash.phases["backward"] > sdpa.phases["backward"]


def test_other_field_names_are_read_through_the_config_class():
    """GPT-BigCode names its shape `n_embd`/`n_head`/`n_layer`/`n_inner` and has one key/value head with
    `multi_query`; Falcon-7B the same with `multi_query`, Falcon-40B `num_kv_heads` under
    `new_decoder_architecture`. The oracle: transformers' config class and the built attention."""
    import pytest

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vramplan.models import spec_from_config

    configs = [
        {"model_type": "gpt_bigcode", "n_embd": 256, "n_inner": 1024, "n_layer": 2, "n_head": 4, "vocab_size": 1000,
         "multi_query": True},
        {"model_type": "falcon", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 1000, "multi_query": True, "new_decoder_architecture": False},
        {"model_type": "falcon", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_kv_heads": 2, "vocab_size": 1000, "new_decoder_architecture": True},
    ]
    for cfg in configs:
        spec = spec_from_config(cfg, "tiny", "test")
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
        c = model.config
        assert (spec.hidden_size, spec.num_layers, spec.num_heads) == (c.hidden_size, c.num_hidden_layers,
                                                                       c.num_attention_heads)
        block = model.transformer.h[0]  # the key projection's width, from the fused qkv: q + 2 kv
        qkv = block.attn.c_attn if cfg["model_type"] == "gpt_bigcode" else block.self_attention.query_key_value
        k_out = (qkv.out_features - c.hidden_size) // 2
        assert spec.num_kv_heads * spec.head_dim == k_out
        assert spec.num_params == sum(p.numel() for p in model.parameters())
