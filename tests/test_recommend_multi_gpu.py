"""`vramplan suggest --gpus N`: the advisor searches how the GPUs share the work (DDP, ZeRO-2, FSDP, CPU offload)
with the per-GPU estimator, keeps offloaded state within the host RAM, and finds the known recipes: FSDP-QLoRA
for a 70B model on two 24 GB cards (Answer.AI's fsdp_qlora: 4-bit weights stored in bf16, checkpointing, CPU
offload), plain DDP when replicas fit."""

from __future__ import annotations

import json

import pytest

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.estimator import estimate_memory
from vramplan.hardware import resolve_gpu
from vramplan.models import resolve_model
from vramplan.plan import TrainingPlan, make_plan
from vramplan.recommend import recommend
from vramplan.search_space import Request
from vramplan.speed import step_time
from vramplan.vocab import engine_words

GiB = 2**30


def advise(model: str, gpu: str, gpus: int, host_gib: float | None = 128, **kw):
    host = None if host_gib is None else int(host_gib * GiB)
    return recommend(Request(model=resolve_model(model), gpu=resolve_gpu(gpu), gpus=gpus, host_ram_bytes=host, **kw))


def per_gpu_bytes(model: str, plan: dict | TrainingPlan, gpu: str) -> int:
    e = estimate(model, TrainingPlan.from_dict(plan), gpu=gpu)
    return e.total_gpu_bytes + e.paged_bytes


def test_70b_on_two_24gb_cards_is_fsdp_qlora_with_cpu_offload():
    a = advise("llama2-70b", "rtx4090", gpus=2)
    assert a.plans, "the FSDP-QLoRA recipe fits 2 x 24 GB"
    for r in a.plans:
        p = r.estimate.plan
        assert (p.method, p.gpus, p.parallelism, p.offload) == ("qlora", 2, "fsdp", "params")
        assert p.storage_dtype == "bf16" and not p.kbit_upcast and p.grad_ckpt  # the recipe's settings
        assert p.batch * p.grad_accum * p.gpus == 16
        assert r.gpu_bytes == per_gpu_bytes("llama2-70b", r.estimate.plan, "rtx4090") <= a.limit_bytes
        host = estimate_memory(resolve_model("llama2-70b"), p).host_offload_bytes
        assert r.host_bytes == 2 * host <= 128 * GiB
    # Without offload FSDP does not fit: the unsharded root and the activations stay on each card.
    knob = next(k for k in a.knobs if k.knob == engine_words("fsdp"))
    assert not knob.fits and knob.gpu_bytes_delta > 0
    # LoRA and full fine-tuning fit the cards only with offload, and then need more host RAM than 128 GiB.
    assert {b.method: b.host_fits for b in a.blockers} == {"full": False, "lora": False}
    assert all(b.host_bytes > 128 * GiB and b.gpu_bytes <= a.limit_bytes for b in a.blockers)


def test_more_host_ram_lets_lora_on_the_16bit_base_win():
    lora = next(b for b in advise("llama2-70b", "rtx4090", gpus=2).blockers if b.method == "lora")
    a = advise("llama2-70b", "rtx4090", gpus=2, host_gib=lora.host_bytes / GiB + 1)
    p = a.plans[0].estimate.plan
    assert (p.method, p.sharding, p.offload) == ("lora", "fsdp", "params")
    assert a.plans[0].host_bytes <= lora.host_bytes + GiB


def test_one_card_is_not_enough_for_70b_and_the_gpu_count_is_exact():
    a = advise("llama2-70b", "rtx4090", gpus=1)
    assert not a.plans
    limit = a.limit_bytes
    for o in a.nearest.options:
        for n, offload in ((o.fsdp_gpus, "none"), (o.fsdp_offload_gpus, "params")):
            assert n is not None and n >= 2
            def gpu_bytes(k: int, o=o, offload=offload) -> int:
                plan = {**o.plan, "gpus": k, "sharding": "fsdp", "offload": offload, "optimizer": "adamw_fused",
                        "grad_accum": max(1, -(-16 // (k * o.plan["batch"]))), "quant_storage": None,
                        "kbit_upcast": False if o.method == "qlora" else o.plan["kbit_upcast"]}
                return per_gpu_bytes("llama2-70b", plan, "rtx4090")
            assert gpu_bytes(n) <= limit
            assert n == 2 or gpu_bytes(n - 1) > limit
        assert o.fsdp_offload_gpus <= o.fsdp_gpus


def test_ddp_when_replicas_fit():
    """7B LoRA on 2 x A100 80GB: every engine fits; DDP moves the fewest bytes, so it is the fastest."""
    a = advise("llama-7b", "a100-80gb", gpus=2, objective="speed")
    p = a.plans[0].estimate.plan
    assert (p.sharding, p.offload) == ("ddp", "none")
    one = advise("llama-7b", "a100-80gb", gpus=1, objective="speed").plans[0]
    assert 1.7 < a.plans[0].tokens_per_s / one.tokens_per_s <= 2.0


def test_pinned_sharding_is_kept():
    a = advise("llama-7b", "rtx4090", gpus=4, pinned={"sharding": "zero3"}, methods=("full",))
    assert a.plans and {(r.estimate.plan.sharding, r.estimate.plan.method) for r in a.plans} == {("zero3", "full")}


# Speed model on several GPUs --------------------------------------------------------------------------------


def _time(gpu: str = "rtx4090", model: str = "llama-7b", **plan):
    return step_time(resolve_model(model), make_plan(**{"method": "full", "batch": 1, "grad_accum": 8, **plan}),
                     resolve_gpu(gpu))


def test_collectives_cost_more_as_more_is_sharded():
    """Full fine-tuning of 7B on 2 x RTX 4090 (PCIe, 23.6 GB/s at 75%): DDP all-reduces 13.5 GB of gradients once
    per step, under the last backward; ZeRO-2 reduce-scatters them every micro-batch and all-gathers the updated
    weights after the step; FSDP moves 3 x 13.5 GB every micro-batch."""
    ddp, zero2, fsdp = (_time(gpus=2, sharding=s) for s in ("ddp", "zero2", "fsdp"))
    assert 0 < ddp.comm_s < min(zero2.comm_s, fsdp.comm_s)
    assert zero2.comm_s > 13.5e9 / 2 / (31.5e9 * 0.75)  # at least the exposed all-gather after the step
    # 256 tokens a micro-batch: FSDP's 40 GB (0.86 s) outlast the compute they overlap (~0.25 s)
    short = _time(gpus=2, sharding="fsdp", seq=256)
    assert short.step_s > 8 * 0.85 > 8 * short.micro_batch_s
    offloaded = _time(gpus=2, sharding="fsdp", offload="params")
    assert offloaded.offload_s > 0 and offloaded.step_s > fsdp.step_s


def test_data_parallel_scales_tokens_and_nvlink_beats_pcie():
    one, two = _time("a100-80gb", method="lora"), _time("a100-80gb", method="lora", gpus=2)
    assert two.tokens_per_s == pytest.approx(2 * one.tokens_per_s, rel=0.05)  # LoRA gradients are tiny
    pcie = _time("a100-80gb-pcie", gpus=4, sharding="fsdp")
    nvlink = _time("a100-80gb", gpus=4, sharding="fsdp")
    assert nvlink.comm_s < pcie.comm_s  # 4 cards: the PCIe card's NVLink bridge joins only 2


# CLI --------------------------------------------------------------------------------------------------------


def test_cli_finds_the_fsdp_qlora_recipe(capsys):
    assert main(["suggest", "--model", "llama2-70b", "--gpu", "rtx4090", "--gpus", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 x rtx4090" in out and f"{engine_words('fsdp')} + CPU offload" in out and "bnb_4bit_quant_storage" in out
    assert "host RAM" in out
    assert main(["suggest", "--model", "llama2-70b", "--gpu", "rtx4090", "--gpus", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    row = data["plans"][0]
    assert row["plan"]["gpus"] == 2 and row["plan"]["sharding"] == "fsdp" and row["host_bytes"] > 0
    assert data["gpus"] == 2 and data["host_ram_bytes"] == 128 * GiB
