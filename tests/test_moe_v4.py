"""`--transformers 4` MoE experts: each expert an nn.Linear (estimator/experts_v4.py, moe.moe_v4).

The fast tests pin the arithmetic from the config by hand. The tests against the library need transformers 4.57
(a separate interpreter: `VRAMPLAN_TF4_PYTHON`, else /tmp/f3tf4 or /tmp/tf4, with torch, transformers 4.57,
peft 0.17 and bitsandbytes 0.48; the main venv has transformers 5) and skip without it: the 4.57 module tree
(names, shapes, what `replace_with_bnb_linear` quantizes, what peft's `all-linear` wraps) and, slow, a real CPU
LoRA step on tiny models measured by vramplan.measure's tracker.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vramplan.estimator import estimate_memory
from vramplan.estimator.experts_v4 import transformers_model
from vramplan.estimator.moe import expert_rows
from vramplan.estimator.weights import quantized_layer_bytes, resolve_targets, static_memory, unquantized_experts_note
from vramplan.models import preset_spec, spec_from_config
from vramplan.plan import make_plan

MIX = {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
       "vocab_size": 128, "max_position_embeddings": 256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
QW2 = {"model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
       "shared_expert_intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "num_experts": 8, "num_experts_per_tok": 2, "vocab_size": 128,
       "max_position_embeddings": 256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
QW3 = {"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8,
       "num_experts_per_tok": 2, "vocab_size": 128, "max_position_embeddings": 256, "tie_word_embeddings": False,
       "torch_dtype": "bfloat16"}
CONFIGS = {"mixtral": MIX, "qwen2_moe": QW2, "qwen3_moe": QW3}
# Mixtral's proportions at a CPU-trainable size (hidden 1024, 8 experts of 3584, top-2), for a 1024-token step
MIX_MID = {**MIX, "hidden_size": 1024, "intermediate_size": 3584, "num_attention_heads": 8, "num_local_experts": 8,
           "vocab_size": 32000, "max_position_embeddings": 4096}


def test_expert_rows_bound():
    """Rows sum to tokens x top_k (each token picks top_k distinct experts); the last expert takes every token."""
    for t, k, e in ((64, 2, 4), (4096, 2, 8), (4096, 8, 128), (7, 3, 5), (5, 1, 4), (3, 4, 4)):
        rows = expert_rows(t, k, e)
        assert len(rows) == e and sum(rows) == t * k and rows[-1] == t and max(rows) <= t
    assert expert_rows(9, 1, 1) == (9,)


def _mixtral_linears() -> list[tuple[int, int]]:
    """(out, in) of every decoder nn.Linear of Mixtral-8x7B under transformers 4.57, from its config."""
    h, inter, kv, e = 4096, 14336, 1024, 8
    layer = [(h, h), (kv, h), (kv, h), (h, h), (e, h)] + [(inter, h), (h, inter), (inter, h)] * e
    return layer * 32


def test_mixtral_qlora_v4_quantizes_every_expert():
    model = preset_spec("mixtral-8x7b")
    plan = make_plan(method="qlora", transformers=4)
    st = static_memory(model, plan)
    parts = [quantized_layer_bytes(o * i, 64, True) for o, i in _mixtral_linears()]
    assert st.quantized_weights == sum(p[0] for p in parts)
    assert st.quant_constants == sum(p[1] for p in parts)
    assert st.double_quant_constants == sum(p[2] for p in parts)
    # what stays 16/32-bit: the embeddings, lm_head and the norms, upcast to fp32; the rotary inv_freq buffers
    h, vocab = 4096, 32000
    assert st.base_weights == (2 * vocab * h + 65 * h) * 4 + 2 * 64 * 4
    assert unquantized_experts_note(model, plan) is None
    assert unquantized_experts_note(model, make_plan(method="qlora", transformers=5)) is not None
    assert estimate_memory(model, plan).peak_bytes < 30 * 2**30  # transformers 5: over 170 GiB


def test_mixtral_lora_v4_all_linear_wraps_every_expert():
    model = preset_spec("mixtral-8x7b")
    plan = make_plan(method="qlora", transformers=4, targets="all-linear", rank=8)
    assert set(resolve_targets(model, plan)) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate", "w1", "w2", "w3"}
    st = static_memory(model, plan)
    assert sum(st.trainable_numels) == sum(8 * (o + i) for o, i in _mixtral_linears())
    default = make_plan(method="qlora", transformers=4)
    assert resolve_targets(model, default) == ("q_proj", "v_proj")


def test_qwen2_moe_v4_shared_expert_shares_the_names():
    """peft matches leaf names: the shared expert's gate/up/down_proj are wrapped with the experts', each LoRA
    sized by its own linear (the experts' 32 and the shared expert's 80 rows)."""
    model = spec_from_config(QW2, "tiny-qwen2-moe", "test")
    plan = make_plan(method="lora", transformers=4, targets="gate_proj,up_proj,down_proj", rank=4)
    st = static_memory(model, plan)
    per_layer = 8 * 3 * 4 * (64 + 32) + 3 * 4 * (64 + 80)
    assert sum(st.trainable_numels) == 2 * per_layer


def test_v4_spec_is_cached_apart():
    model = preset_spec("qwen3-30b-a3b")
    v4 = transformers_model(model, make_plan(method="lora", transformers=4))
    assert v4 is transformers_model(model, make_plan(method="qlora", transformers=4))
    assert v4.fingerprint != model.fingerprint and v4.inventory.total_numel == model.inventory.total_numel
    assert transformers_model(model, make_plan(method="lora", transformers=5)) is model


def test_v4_fsdp_shards_quantized_experts():
    model = preset_spec("mixtral-8x7b")
    v4 = estimate_memory(model, make_plan(method="qlora", transformers=4, gpus=2, sharding="fsdp"))
    v5 = estimate_memory(model, make_plan(method="qlora", transformers=5, gpus=2, sharding="fsdp"))
    assert v4.peak_bytes < 20 * 2**30 < v5.peak_bytes


# Against transformers 4.57 ---------------------------------------------------------------------------------------

def _tf4_python() -> str | None:
    for p in (os.environ.get("VRAMPLAN_TF4_PYTHON"), "/tmp/f3tf4/bin/python", "/tmp/tf4/bin/python"):
        if p and Path(p).exists():
            ok = subprocess.run([p, "-c", "import transformers, peft, bitsandbytes, torch; "
                                 "assert transformers.__version__.startswith('4.')"], capture_output=True)
            if ok.returncode == 0:
                return p
    return None


TF4 = _tf4_python()
needs_tf4 = pytest.mark.skipif(TF4 is None, reason="no interpreter with transformers 4.x (VRAMPLAN_TF4_PYTHON)")
REPO = Path(__file__).resolve().parents[1]

_TREE = """
import json, sys, torch, bitsandbytes as bnb, peft
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
from transformers.integrations import get_keys_to_not_convert
from transformers.integrations.bitsandbytes import replace_with_bnb_linear
from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
cfg = json.loads(sys.argv[1])
with torch.device("meta"):
    m = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
params = [(n, list(p.shape)) for n, p in m.named_parameters()]
m = replace_with_bnb_linear(m, modules_to_not_convert=get_keys_to_not_convert(m),
                            quantization_config=BitsAndBytesConfig(load_in_4bit=True))
q = [n for n, mod in m.named_modules() if isinstance(mod, bnb.nn.Linear4bit)]
lora = _maybe_include_all_linear_layers(peft.LoraConfig(r=4, target_modules="all-linear"), m).target_modules
print(json.dumps({"params": params, "quantized": q, "all_linear": sorted(lora)}))
"""


@pytest.mark.slow
@needs_tf4
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_v4_module_tree_matches_transformers_4(arch):
    out = subprocess.run([TF4, "-c", _TREE, json.dumps(CONFIGS[arch])], capture_output=True, text=True, check=True)
    real = json.loads(out.stdout.strip().splitlines()[-1])
    model = spec_from_config(CONFIGS[arch], f"tiny-{arch}", "test")
    plan = make_plan(method="qlora", transformers=4, targets="all-linear")
    inv = transformers_model(model, plan).inventory
    assert {t.name: list(t.shape) for t in inv.tensors} == dict(real["params"])
    assert {t.name.removesuffix(".weight") for t in inv.tensors if t.role == "linear"} == set(real["quantized"])
    assert set(resolve_targets(model, plan)) == {n.rsplit(".", 1)[-1] for n in real["all_linear"]}


_STEP = """
import json, sys
sys.path.insert(0, sys.argv[3])
from vramplan.measure.trainer import measure_step
from vramplan.plan import make_plan
r = measure_step(json.loads(sys.argv[1]), make_plan(**json.loads(sys.argv[2])), device="cpu", steps=2)
print(json.dumps([r.load_bytes, r.forward_peak_bytes, r.backward_peak_bytes, r.optimizer_peak_bytes]))
"""

# (config, plan, forward/backward tolerance): exact without checkpointing (every expert's saved tensors are kept,
# and they sum over tokens x top_k rows whatever the split); with checkpointing the recomputed layer's transient
# is priced with the skewed bound (`expert_rows`), above a random router's split
TINY = {"batch": 2, "seq": 32, "transformers": 4}
STEPS = [
    (MIX, {**TINY, "method": "lora", "targets": "all-linear", "grad_ckpt": False}, (0.002, 0.002)),
    (MIX, {**TINY, "method": "lora", "grad_ckpt": False}, (0.002, 0.002)),
    (QW3, {**TINY, "method": "lora", "targets": "all-linear", "grad_ckpt": False}, (0.002, 0.002)),
    (MIX, {**TINY, "method": "lora", "targets": "all-linear"}, (0.02, 0.02)),
    # measured -0.12% (forward and backward) with reentrant checkpointing, +0.00% without
    (MIX_MID, {"batch": 1, "seq": 1024, "transformers": 4, "method": "lora", "targets": "all-linear"}, (0.01, 0.01)),
]


@pytest.mark.slow
@needs_tf4
@pytest.mark.parametrize("cfg,plan_kw,tol", STEPS)
def test_v4_lora_step_traced_with_transformers_4(cfg, plan_kw, tol):
    out = subprocess.run([TF4, "-c", _STEP, json.dumps(cfg), json.dumps(plan_kw), str(REPO)],
                         capture_output=True, text=True, check=True)
    load, fwd, bwd, opt = json.loads(out.stdout.strip().splitlines()[-1])
    est = estimate_memory(spec_from_config(cfg, "tiny-moe", "test"), make_plan(**plan_kw))
    ph = est.traced_phases or est.phases
    assert ph["load"] == pytest.approx(load, rel=1e-3) and ph["optimizer"] == pytest.approx(opt, rel=1e-3)
    assert 0 <= (ph["forward"] - fwd) / fwd + 0.002 <= tol[0] + 0.002
    assert 0 <= (ph["backward"] - bwd) / bwd + 0.002 <= tol[1] + 0.002


def test_v4_speed_and_suggest_take_the_expert_linears():
    """The step-time model reads the same targets (the experts' adapters counted once each) and suggest passes
    --transformers through to its plans."""
    from vramplan.commands.suggest import PLAN_FIELDS
    from vramplan.hardware import resolve_gpu
    from vramplan.speed import step_time, trainable_adapters

    model = preset_spec("mixtral-8x7b")
    plan = make_plan(method="qlora", transformers=4, targets="all-linear", rank=8)
    assert trainable_adapters(model, plan) == sum(8 * (o + i) for o, i in _mixtral_linears())
    assert step_time(model, plan, resolve_gpu("a100-80gb")).tokens_per_s > 0
    assert "transformers" in PLAN_FIELDS
