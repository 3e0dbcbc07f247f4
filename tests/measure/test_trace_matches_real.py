"""A traced step (FakeTensorMode, no memory) allocates exactly what a real CPU step allocates, to the byte.

Each case runs the same plan twice on a tiny llama (real random weights on CPU, then FakeTensors) and compares
every phase peak and the peak snapshots. Only the ops that made the weights differ (a real build runs
`from_config`'s init, a traced one `to_empty`), so setup allocations are compared without their op.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from vramplan.measure.trainer import measure_step  # noqa: E402
from vramplan.plan import make_plan  # noqa: E402

TINY_LLAMA = dict(
    model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=256,
)
TIED_QWEN2 = dict(TINY_LLAMA, model_type="qwen2", tie_word_embeddings=True)
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # phi3's defaults lie outside a 256 vocabulary
ARCHS = {
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64),  # Conv1D
    "phi3": dict(TINY_LLAMA, model_type="phi3", **TOKENS),  # fused qkv_proj
    "mistral": dict(TINY_LLAMA, model_type="mistral"),
    "qwen3": dict(TINY_LLAMA, model_type="qwen3", head_dim=16),  # q/k norms
}

CASES = {
    "qlora-nf4-dq": dict(method="qlora"),
    "qlora-nf4-no-dq": dict(method="qlora", double_quant=False),
    "qlora-no-ckpt": dict(method="qlora", grad_ckpt=False),
    "qlora-no-dq-no-ckpt": dict(method="qlora", double_quant=False, grad_ckpt=False),
    "qlora-blocksize-128": dict(method="qlora", quant_blocksize=128),
    "qlora-fp4-no-upcast-reentrant": dict(method="qlora", quant="fp4", kbit_upcast=False, ckpt_reentrant=True),
    "qlora-all-linear-dropout-eager": dict(method="qlora", targets="all-linear", lora_dropout=0.1, attn="eager"),
    "lora": dict(method="lora"),
    "lora-no-ckpt": dict(method="lora", grad_ckpt=False),
    "lora-attention-adamw8bit": dict(method="lora", targets="attention", optimizer="adamw_8bit"),
    "full": dict(method="full"),
    "full-no-ckpt": dict(method="full", grad_ckpt=False),
    "full-fp32-autocast-bf16": dict(method="full", param_dtype="fp32", mixed_precision="bf16"),
    "full-grad-accum-2": dict(method="full", grad_accum=2, grad_ckpt=False),
    "full-lion8bit": dict(method="full", optimizer="lion_8bit"),
    "full-adafactor": dict(method="full", optimizer="adafactor"),
    "full-sgd-momentum": dict(method="full", optimizer="sgd_momentum"),
    "full-fused-adamw": dict(method="full", optimizer="adamw_fused"),
    "lora-paged-adamw32": dict(method="lora", targets="all-linear", optimizer="paged_adamw_32bit"),
}
BYTES = ("load_bytes", "forward_peak_bytes", "backward_peak_bytes", "optimizer_peak_bytes", "after_step_bytes")


def _comparable(snapshot):
    return Counter(replace(a, op="") if a.phase == "setup" else a for a in snapshot)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_trace_equals_real_cpu_step(case):
    plan = make_plan(batch=2, seq=32, **CASES[case])
    real = measure_step(TINY_LLAMA, plan, trace=False)
    traced = measure_step(TINY_LLAMA, plan, trace=True)
    assert {k: getattr(traced, k) for k in BYTES} == {k: getattr(real, k) for k in BYTES}
    assert traced.peak_phase == real.peak_phase
    assert _comparable(traced.peak_snapshot) == _comparable(real.peak_snapshot)
    assert traced.trainable_params == real.trainable_params


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(method="qlora", kbit_upcast=False), dict(method="full")])
def test_tied_embeddings_and_biases_when_traced(options):
    """`to_empty` unties shared weights (the traced build re-ties them); qwen2's q/k/v biases keep the
    checkpoint dtype in 4-bit layers (bf16 here: no kbit upcast to hide a wrong dtype)."""
    plan = make_plan(batch=1, seq=16, **options)
    real = measure_step(TIED_QWEN2, plan, trace=False)
    traced = measure_step(TIED_QWEN2, plan, trace=True)
    assert {k: getattr(traced, k) for k in BYTES} == {k: getattr(real, k) for k in BYTES}
    assert _comparable(traced.peak_snapshot) == _comparable(real.peak_snapshot)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["qlora", "lora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_trace_equals_real_across_architectures(arch, method):
    """Run in one process, in sequence: also catches tracing state that leaks from one model to the next."""
    plan = make_plan(method=method, targets="attention", batch=2, seq=16)
    real = measure_step(ARCHS[arch], plan, trace=False)
    traced = measure_step(ARCHS[arch], plan, trace=True)
    assert {k: getattr(traced, k) for k in BYTES} == {k: getattr(real, k) for k in BYTES}
