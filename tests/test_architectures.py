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
