"""`suggest` and `estimate --gpu` have one owner for "fits": every plan suggest shows, every knob cost, limit and
nearest option is `vramplan.api.estimate(model, plan, gpu=...)`'s device model (the allocator simulation, the
CUDA context, NCCL), and the advisor's cheap floor never rejects a plan that simulation would accept."""

from __future__ import annotations

import pytest

from vramplan.api import estimate
from vramplan.hardware import resolve_gpu
from vramplan.models import resolve_model
from vramplan.plan import make_plan
from vramplan.recommend import recommend
from vramplan.search import least_on_card
from vramplan.search_space import Probe, Request


def on_card(model: str, plan: dict, gpu: str) -> int:
    """The oracle: what `estimate(gpu=...)` says the plan takes on the card, with paged states."""
    e = estimate(model, make_plan(**plan), gpu=gpu)
    return e.total_gpu_bytes + e.paged_bytes


def check_shown_plans(a, model: str, gpu: str) -> None:
    assert a.plans
    for r in a.plans:
        e = estimate(model, r.estimate.plan, gpu=gpu)
        assert e.fits and r.estimate.fits
        # the same numbers: peak, reserved, device total, free
        assert (r.estimate.peak_bytes, r.estimate.reserved_bytes, r.estimate.total_gpu_bytes, r.estimate.headroom_bytes
                ) == (e.peak_bytes, e.reserved_bytes, e.total_gpu_bytes, e.headroom_bytes)
        assert r.gpu_bytes == e.total_gpu_bytes + e.paged_bytes <= a.limit_bytes
    best = a.plans[0]
    for k in a.knobs:
        assert k.gpu_bytes_delta == on_card(model, k.plan, gpu) - best.gpu_bytes
        assert k.fits == (on_card(model, k.plan, gpu) <= a.limit_bytes)


@pytest.mark.slow
@pytest.mark.parametrize("model, gpu, gpus", [("qwen2.5-0.5b", "t4", 1), ("qwen2.5-0.5b", "rtx3060-12gb", 2)])
def test_small_model_shown_plans_and_knobs_are_estimates_numbers(model, gpu, gpus):
    a = recommend(Request(model=resolve_model(model), gpu=resolve_gpu(gpu), gpus=gpus, top=2))
    check_shown_plans(a, model, gpu)


@pytest.mark.slow
@pytest.mark.parametrize("model, gpu, gpus, objective", [
    ("llama-7b", "rtx4090", 1, "quality"), ("mistral-7b", "l4", 1, "speed"), ("llama2-13b", "rtx4090", 1, "memory"),
    ("llama3.1-8b", "rtx4090", 2, "quality"), ("phi3-mini", "t4", 1, "quality"),
])
def test_shown_plans_and_knobs_are_estimates_numbers(model, gpu, gpus, objective):
    a = recommend(Request(model=resolve_model(model), gpu=resolve_gpu(gpu), gpus=gpus, objective=objective))
    check_shown_plans(a, model, gpu)
    lim, plan = a.limits, a.plans[0].estimate.plan.to_dict()
    assert on_card(model, {**plan, "batch": lim.max_batch}, gpu) <= a.limit_bytes
    assert on_card(model, {**plan, "batch": lim.max_batch + 1}, gpu) > a.limit_bytes


@pytest.mark.parametrize("kw", [
    {"method": "qlora", "seq": 1024, "batch": 1}, {"method": "lora", "seq": 2048, "batch": 4, "grad_ckpt": True},
    {"method": "full", "seq": 512, "batch": 2, "optimizer": "adamw_8bit"},
    {"method": "lora", "seq": 1024, "batch": 2, "gpus": 2, "sharding": "fsdp"},
])
def test_the_floor_is_below_the_simulated_total(kw):
    """The pruning bound (`device.device_floor_bytes`) never exceeds what the simulation gives."""
    spec, gpu = resolve_model("qwen2.5-0.5b"), resolve_gpu("rtx4090")
    probe = Probe(Request(model=spec, gpu=gpu, gpus=kw.get("gpus", 1)))
    cand = probe.evaluate(make_plan(**kw))
    assert cand.floor_bytes <= cand.gpu_bytes
    assert cand.device.total_gpu_bytes == estimate(spec, cand.plan, gpu="rtx4090").total_gpu_bytes


def test_least_on_card_is_the_plain_minimum():
    """The branch and bound picks what `min` over every simulated candidate picks."""
    spec, gpu = resolve_model("qwen2.5-0.5b"), resolve_gpu("rtx3060-12gb")
    probe = Probe(Request(model=spec, gpu=gpu))
    cands = [probe.evaluate(make_plan(method=m, seq=s, batch=b, grad_ckpt=c))
             for m in ("lora", "full") for s in (512, 2048) for b in (1, 4) for c in (False, True)]
    def key(c):
        return (c.gpu_bytes, c.peak_bytes)

    assert least_on_card(cands, lambda c: (c.peak_bytes,)) is min(cands, key=key)
    fitting = [c for c in cands if c.gpu_bytes <= 6 * 2**30]
    assert least_on_card(cands, lambda c: (c.peak_bytes,), 6 * 2**30) is (min(fitting, key=key) if fitting else None)
