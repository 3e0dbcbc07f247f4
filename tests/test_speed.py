"""The speed model (vramplan.speed, vramplan.step_kernels, vramplan.kernels): its byte counts are pinned to what
torch, peft and bitsandbytes do (measured here on CPU with a dispatch mode), and its tokens/s to published runs
(benchmarks/data/published_speed.csv; each row names its source)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vramplan.hardware import resolve_gpu
from vramplan.kernels import eager_score_bytes, gemm_s, rates
from vramplan.models import resolve_model
from vramplan.plan import make_plan
from vramplan.speed import step_time
from vramplan.step_kernels import OPTIMIZER_BYTES, dtypes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import published_speed  # noqa: E402

_NO_COPY = {"aten::_unsafe_view", "aten::expand", "aten::view", "aten::reshape", "aten::alias"}


class _Traffic(TorchDispatchMode):
    """Bytes each aten op reads (tensor arguments) and writes (outputs, or the first argument of in-place ops),
    counting only tensors of `numel` elements (one parameter's worth)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.bytes, self.ops = numel, 0, []

    def _size(self, tree: object) -> int:
        return sum(t.numel() * t.element_size() for t in tree_leaves(tree)
                   if isinstance(t, torch.Tensor) and t.numel() == self.numel)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._schema.name in _NO_COPY:  # aliases move no bytes
            return out
        inplace = func._schema.name.endswith("_")
        written = self._size(args[0]) if inplace else self._size(out)
        moved = self._size((args, kwargs)) + written
        if moved:
            self.bytes += moved
            self.ops.append(func._schema.name)
        return out


@pytest.mark.parametrize(("name", "make"), [
    ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.01, foreach=True)),
    ("sgd", lambda p: torch.optim.SGD(p, lr=1e-4, foreach=True)),
    ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9, foreach=True)),
])
def test_optimizer_bytes_per_parameter_match_torch(name, make):
    """The bytes torch's foreach optimizers read and write per parameter, op by op (steady-state step)."""
    numel = 4096
    param = torch.nn.Parameter(torch.randn(numel, dtype=torch.bfloat16))
    param.grad = torch.randn_like(param)
    opt = make([param])
    opt.step()  # states exist; the measured step is the steady state
    with _Traffic(numel) as traffic:
        opt.step()
    assert traffic.bytes == OPTIMIZER_BYTES[name](2) * numel, traffic.ops


@pytest.mark.slow  # imports peft and bitsandbytes (seconds on a loaded machine)
def test_peft_keeps_adapters_fp32_and_bitsandbytes_casts_back():
    """The dtypes the speed model assumes: peft's adapters are fp32 on a bf16 base (autocast_adapter_dtype), and
    bitsandbytes' Linear4bit returns its input's dtype (fp32 after the kbit upcast)."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(32, 32, dtype=torch.bfloat16))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["0"]))
    a = next(p for n, p in peft_model.named_parameters() if "lora_A" in n)
    assert a.dtype == torch.float32
    plan = make_plan(method="lora")
    assert dtypes(plan).adapter == 4 and dtypes(plan, autocast=True).adapter == 2

    lin = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    lin.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")._quantize("cpu")
    assert lin(torch.randn(3, 64)).dtype == torch.float32
    qlora = make_plan(method="qlora")  # kbit upcast: fp32 residual stream, so fp32 layer activations
    assert qlora.kbit_upcast and dtypes(qlora).layer == 4 and dtypes(qlora).attention == 4
    assert dtypes(qlora, autocast=True).attention == 2


def test_eager_attention_streams_the_score_matrix_as_counted():
    """transformers' eager_attention_forward: bytes of the elementwise ops on the [b, h, s, s] scores."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import eager_attention_forward

    b, h, s, d = 1, 2, 16, 8
    q, k, v = (torch.randn(b, h, s, d, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.zeros(b, 1, s, s, dtype=torch.bfloat16)
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 1, False
    module.config = LlamaConfig()
    with _Traffic(b * h * s * s) as traffic:
        eager_attention_forward(module, q, k, v, mask, scaling=d**-0.5, dropout=0.0)
    gemm_io = 2 * 2 * b * h * s * s  # QK^T writes the scores, PV reads the probabilities (in the GEMM model)
    assert traffic.bytes - gemm_io == eager_score_bytes(2)[0] * b * h * s * s, traffic.ops


def test_small_gemms_are_memory_bound_and_large_ones_compute_bound():
    r = rates(resolve_gpu("a100-80gb"), "mid")
    lora_a = gemm_s(16384, 16, 4096, r)  # x [T, 4096] @ A^T [4096, 16]: reading x dominates
    assert lora_a == pytest.approx(2 * (16384 * 4096 + 4096 * 16 + 16384 * 16) / r.bytes_per_s)
    big = gemm_s(16384, 14336, 4096, r)
    assert big == pytest.approx(2 * 16384 * 14336 * 4096 / r.matmul_flops)


def test_mechanisms_move_the_estimate_the_way_the_libraries_do():
    m, gpu = resolve_model("llama2-7b"), resolve_gpu("a100-80gb")
    base = {"method": "lora", "batch": 4, "seq": 2048}
    lora = step_time(m, make_plan(**base), gpu)
    assert lora.tokens_per_s_low < lora.tokens_per_s < lora.tokens_per_s_high
    no_ckpt = step_time(m, make_plan(**base, grad_ckpt=False), gpu)
    assert 1.15 < no_ckpt.tokens_per_s / lora.tokens_per_s < 1.5  # recompute reruns the layers' forward
    eager = step_time(m, make_plan(**base, attn="eager"), gpu)
    assert eager.attention_s > 2 * lora.attention_s  # full square + the score matrix through HBM
    qlora = step_time(m, make_plan(**{**base, "method": "qlora"}), gpu, autocast=True)
    assert qlora.dequant_s > 0 and qlora.tokens_per_s < lora.tokens_per_s
    fp32_attention = step_time(m, make_plan(**{**base, "method": "qlora"}), gpu)
    assert fp32_attention.attention_s > 4 * qlora.attention_s  # no autocast: fp32 q/k/v, no FLASH
    tiny = step_time(resolve_model("qwen2.5-0.5b"), make_plan(method="lora", batch=1, seq=64), gpu)
    assert tiny.cpu_bound  # a few hundred tokens cannot hide eager PyTorch's launches


def _published(ids_prefix: tuple[str, ...]) -> list[dict]:
    rows = [r for r in published_speed.load_rows() if r["id"].startswith(ids_prefix)]
    return [published_speed.compare_row(r) for r in rows]


def test_published_runs_on_presets_within_15_percent():
    """Mistral-7B on an A100 (full, LoRA, QLoRA; fms-acceleration) and Llama-3.2-3B on an L40S (peft's
    MetaMathQA runs): median |error| <= 15%, every row within 20%, most inside the interval."""
    results = [r for r in _published(("FMS3", "FMS4", "FMS5", "FMS6", "FMS7", "FMS8", "PM")) if r["compares"]]
    assert len(results) == 10
    errors = [abs(r["error_pct"]) for r in results]
    assert statistics.median(errors) <= 15 and max(errors) <= 20, errors
    assert sum(r["inside"] for r in results) >= 8


@pytest.mark.slow
def test_published_table_summary_holds_with_every_row():
    """All comparable rows (santacoder's config is read through transformers on the meta device: slow)."""
    summary = published_speed.summary([published_speed.compare_row(r) for r in published_speed.load_rows()])
    assert summary["rows"] == 12 and summary["median_abs_error_pct"] <= 15


def test_every_gpu_profile_and_optimizer_gets_an_ordered_interval():
    from vramplan.hardware import load_profiles

    m = resolve_model("qwen2.5-0.5b")
    plans = [make_plan(method=meth, optimizer=opt, attn=attn, batch=2, seq=512)
             for meth in ("full", "lora", "qlora") for opt in ("adamw", "adamw_fused", "paged_adamw_8bit", "sgd")
             for attn in ("sdpa", "eager")]
    for gpu in load_profiles().values():
        for plan in plans[:: 3 if gpu.slug != "t4" else 1]:
            est = step_time(m, plan, gpu)
            assert 0 < est.tokens_per_s_low <= est.tokens_per_s <= est.tokens_per_s_high, (gpu.slug, plan)
