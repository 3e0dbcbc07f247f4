"""The hand-written inventory equals the real transformers model built on the meta device, tensor by tensor.

Source of truth: `AutoModelForCausalLM.from_config(config)` under `torch.device("meta")` (transformers 5.x),
`named_parameters()` (which lists a tied lm_head once, as the inventory does).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vramplan.inventory import NATIVE_ARCHITECTURES, build_inventory  # noqa: E402
from vramplan.models import preset_config, presets  # noqa: E402

TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)
ARCH_CASES = {
    "llama": {},
    "llama-biases-tied": dict(model_type="llama", attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "mistral": {},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2": {},
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=96, decoder_sparse_step=2),
    "qwen3": dict(head_dim=16),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16, mlp_only_layers=[1]),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16),
    "gemma3_text": dict(head_dim=16),
    "phi3": {},
}


def meta_params(cfg: dict) -> dict[str, tuple[int, ...]]:
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}, model


def assert_same(cfg: dict) -> None:
    real, model = meta_params(cfg)
    inv = build_inventory(cfg)
    mine = {t.name: t.shape for t in inv.tensors}
    assert set(mine) == set(real), (set(mine) ^ set(real))
    assert mine == real
    assert inv.total_numel == sum(p.numel() for p in model.parameters())
    # every nn.Linear (lm_head included) has the shape the inventory says, and the role matches the type
    linears = {f"{n}.weight": tuple(m.weight.shape) for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    assert {k: v for k, v in linears.items() if k in real} == inv.linear_shapes


def test_every_native_architecture_is_covered():
    covered = {c.get("model_type", name) for name, c in ARCH_CASES.items()}
    assert covered == set(NATIVE_ARCHITECTURES)


@pytest.mark.parametrize("case", sorted(ARCH_CASES))
def test_inventory_matches_meta_model_tiny(case):
    extra = dict(ARCH_CASES[case])
    cfg = {"model_type": extra.pop("model_type", case), **TINY, **extra}
    assert_same(cfg)


@pytest.mark.parametrize("slug", sorted(presets()))
def test_inventory_matches_meta_model_preset(slug):
    assert_same(preset_config(slug))


def test_meta_fallback_agrees_with_native_inventory():
    from vramplan.measure.meta_inventory import inventory_from_meta

    cfg = {"model_type": "qwen2_moe", **TINY, **ARCH_CASES["qwen2_moe"]}
    native, meta = build_inventory(cfg), inventory_from_meta(cfg)
    assert {t.name: (t.shape, t.role) for t in native.tensors} == {t.name: (t.shape, t.role) for t in meta.tensors}
