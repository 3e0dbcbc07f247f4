"""`vramplan suggest`: the canonical questions get answers backed by the estimator, every plan it returns fits,
the limits it reports are exact, and the JSON contract holds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.hardware import load_profiles, resolve_gpu
from vramplan.models import resolve_model
from vramplan.plan import TrainingPlan, make_plan
from vramplan.recommend import recommend
from vramplan.search_space import Request
from vramplan.speed import flops_per_token, matmul_params, step_time

GiB = 2**30


def advise(model: str, gpu: str, **kw):
    return recommend(Request(model=resolve_model(model), gpu=resolve_gpu(gpu), **kw))


def gpu_bytes(model: str, plan: dict, gpu: str) -> int:
    """What the plan takes on the card per `vramplan.api.estimate`: reserved + context, plus paged states."""
    e = estimate(model, as_plan(plan), gpu=gpu)
    return e.total_gpu_bytes + e.paged_bytes


def as_plan(plan: dict) -> TrainingPlan:
    """A plan from its JSON form (the `plan` of `estimate --json` / `suggest --json`)."""
    return plan if isinstance(plan, TrainingPlan) else make_plan(**plan)


def fits(model: str, plan: dict, gpu: str, headroom: float = 0.1) -> bool:
    return gpu_bytes(model, plan, gpu) <= resolve_gpu(gpu).usable_bytes * (1 - headroom)


# The canonical questions ------------------------------------------------------------------------------------


def test_7b_on_24gb_lora_on_a_16bit_base_fits_and_qlora_buys_room_at_a_speed_cost():
    """The seeds say LoRA on a 16-bit 7B base needs ~28 GB; with checkpointing the estimator says ~14 GiB."""
    seeds_lora = make_plan(method="lora", rank=8, targets="default", seq=1024, batch=1, grad_ckpt=True)
    assert gpu_bytes("llama-7b", seeds_lora, "rtx4090") < 16 * GiB
    assert fits("llama-7b", seeds_lora, "rtx4090")
    a = advise("llama-7b", "rtx4090")
    best = a.plans[0].estimate.plan
    assert best.method == "lora" and best.param_dtype == "bf16"
    c = a.contrast  # what QLoRA would buy instead, and what it costs
    assert c.plan["method"] == "qlora" and c.fits and c.gpu_bytes < a.plans[0].gpu_bytes
    assert c.speed_ratio < 1  # dequantization makes it slower
    assert c.limits.max_batch > a.limits.max_batch
    text = " ".join(json.loads(_cli_json("--model", "llama-7b", "--gpu", "rtx4090"))["explanation"])
    assert "LoRA" in text and "QLoRA" in text and "slower" in text


def test_7b_on_24gb_memory_objective_is_the_seeds_recipe():
    a = advise("llama-7b", "rtx4090", objective="memory")
    p = a.plans[0].estimate.plan
    recipe = dict(method="qlora", quant="nf4", double_quant=True, rank=8, seq=1024, grad_ckpt=True,
                  optimizer="paged_adamw_8bit", batch=1, grad_accum=16)
    assert {k: getattr(p, k) for k in recipe} == recipe
    peaks = [r.gpu_bytes for r in a.plans]
    assert peaks == sorted(peaks)


def test_7b_on_24gb_speed_objective_ranks_by_tokens_per_s_and_avoids_4bit():
    a = advise("llama-7b", "rtx4090", objective="speed")
    speeds = [r.tokens_per_s for r in a.plans]
    assert speeds == sorted(speeds, reverse=True)
    assert a.plans[0].estimate.plan.method == "lora"
    assert a.plans[0].tokens_per_s >= advise("llama-7b", "rtx4090").plans[0].tokens_per_s


def test_13b_on_24gb_can_only_be_qlora():
    a = advise("llama-13b", "rtx4090")
    assert a.plans and {r.estimate.plan.method for r in a.plans} == {"qlora"}
    assert a.contrast.plan["method"] == "lora" and not a.contrast.fits
    assert {b.method for b in a.blockers} == {"full", "lora"}


@pytest.mark.parametrize("gpu", ["a100-80gb", "h100-sxm"])
def test_quality_on_80gb_for_7b_is_lora_or_full(gpu):
    a = advise("llama-7b", gpu, objective="quality")
    assert a.plans[0].estimate.plan.method in ("lora", "full")


def test_70b_on_a_24gb_card_fits_nothing_and_names_the_nearest_options(capsys):
    a = advise("llama2-70b", "rtx4090")
    assert a.plans == [] and a.limits is None
    qlora = next(o for o in a.nearest.options if o.method == "qlora")
    assert qlora.gpu_bytes > a.limit_bytes and qlora.fsdp_gpus >= 2
    # The smallest single GPU that fits is exact: it fits, and no GPU with less usable memory does.
    gpus = sorted(load_profiles().values(), key=lambda g: g.usable_bytes)
    assert fits("llama2-70b", qlora.plan, qlora.smallest_gpu)
    smaller = [g for g in gpus if g.usable_bytes < resolve_gpu(qlora.smallest_gpu).usable_bytes
               and g.bf16_supported]  # a bf16 plan does not run before Ampere (hardware.check_runs_on)
    assert not any(fits("llama2-70b", qlora.plan, g.slug) for g in smaller)
    assert a.nearest.shorter_seq is None  # the 4-bit weights alone are larger than the card
    code = main(["suggest", "--model", "llama2-70b", "--gpu", "rtx4090"])
    out = capsys.readouterr().out
    assert code == 1 and "Nothing fits" in out and qlora.smallest_gpu in out


def test_tiny_model_on_a_huge_gpu_gets_full_fine_tuning():
    a = advise("qwen2.5-0.5b", "h100-sxm")
    assert a.plans[0].estimate.plan.method == "full"
    assert a.plans[0].estimate.plan.seq >= 4096  # room for long sequences


def test_shorter_sequence_is_offered_when_the_asked_one_does_not_fit():
    a = advise("llama-13b", "rtx3060-12gb", seq=4096, effective_batch=1)
    assert a.plans == [] or a.plans[0].estimate.plan.seq == 4096
    if not a.plans:
        s = a.nearest.shorter_seq
        assert s and s < 4096
        plan = next(o for o in a.nearest.options if o.method == a.nearest.shorter_seq_method).plan
        assert fits("llama-13b", {**plan, "seq": s}, "rtx3060-12gb")
        assert not fits("llama-13b", {**plan, "seq": s + 1}, "rtx3060-12gb")


# Every plan fits; limits are exact --------------------------------------------------------------------------


@pytest.mark.parametrize("model, gpu, objective", [
    ("llama-7b", "rtx4090", "quality"), ("llama-7b", "rtx4090", "speed"), ("llama2-13b", "rtx4090", "memory"),
    ("llama3.1-8b", "a100-80gb", "quality"), ("mistral-7b", "l4", "speed"), ("llama-7b", "t4", "quality"),
    ("gemma2-9b", "rtx3090", "quality"), ("phi3-mini", "rtx3060-12gb", "speed"),
])
def test_every_recommended_plan_fits_with_the_headroom(model, gpu, objective):
    a = advise(model, gpu, objective=objective, headroom=0.1)
    assert a.plans
    for r in a.plans:
        assert r.estimate.fits and r.estimate.gpu == gpu
        assert r.gpu_bytes == gpu_bytes(model, r.estimate.plan, gpu)
        assert fits(model, r.estimate.plan, gpu, headroom=0.1)


@pytest.mark.parametrize("model, gpu, objective", [
    ("llama-7b", "rtx4090", "speed"), ("llama2-7b", "rtx4090", "quality"), ("qwen2.5-0.5b", "h100-sxm", "quality"),
])
def test_max_seq_and_batch_are_exact(model, gpu, objective):
    a = advise(model, gpu, objective=objective)
    plan, lim = a.plans[0].estimate.plan.to_dict(), a.limits
    assert fits(model, {**plan, "seq": lim.max_seq}, gpu)
    assert lim.max_seq == lim.seq_cap or not fits(model, {**plan, "seq": lim.max_seq + 1}, gpu)
    assert fits(model, {**plan, "batch": lim.max_batch}, gpu)
    assert not fits(model, {**plan, "batch": lim.max_batch + 1}, gpu)


def test_knob_costs_are_measured_against_the_winner():
    a = advise("llama-7b", "rtx4090", objective="memory")
    ckpt = next(k for k in a.knobs if k.knob.startswith("gradient checkpointing off"))
    best = a.plans[0]
    assert ckpt.gpu_bytes_delta == gpu_bytes("llama-7b", ckpt.plan, "rtx4090") - best.gpu_bytes > 0
    assert ckpt.speed_ratio > 1.2  # no recompute: a quarter to a third less work


def test_pinned_flags_narrow_the_search():
    a = advise("llama-7b", "rtx4090", methods=("lora",), pinned={"rank": 16, "grad_ckpt": True}, seq=512)
    assert a.plans
    for r in a.plans:
        p = r.estimate.plan
        assert (p.method, p.rank, p.grad_ckpt, p.seq) == ("lora", 16, True, 512)
        assert p.batch * p.grad_accum == 16


# Speed model ------------------------------------------------------------------------------------------------


def test_flops_per_token_is_6n_for_full_and_4_3_more_with_recompute():
    m = resolve_model("llama-7b")
    n = matmul_params(m)
    head = m.vocab_size * m.hidden_size
    full = flops_per_token(m, make_plan(method="full", grad_ckpt=False, seq=1))
    assert full == pytest.approx(6 * n, rel=1e-3)
    full_ckpt = flops_per_token(m, make_plan(method="full", grad_ckpt=True, seq=1))
    assert full_ckpt == pytest.approx(8 * n - 2 * head, rel=1e-3)  # x4/3 of the decoder layers
    lora = flops_per_token(m, make_plan(method="lora", grad_ckpt=False, seq=1))
    assert lora == pytest.approx(4 * n, rel=1e-2)  # frozen weights: no weight gradients


def test_qlora_is_slower_than_lora_and_says_why():
    m, gpu = resolve_model("llama-7b"), resolve_gpu("rtx4090")
    lora = step_time(m, make_plan(method="lora"), gpu)
    qlora = step_time(m, make_plan(method="qlora"), gpu)
    assert qlora.dequant_s > 0 and lora.dequant_s == 0
    assert 0.05 < 1 - qlora.tokens_per_s / lora.tokens_per_s < 0.5


# CLI --------------------------------------------------------------------------------------------------------


def _cli_json(*argv: str) -> str:
    out = subprocess.run([sys.executable, "-m", "vramplan", "suggest", *argv, "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_json_contract(capsys):
    assert main(["suggest", "--model", "llama-7b", "--gpu", "rtx4090", "--json", "--top", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["plans"]) == 3
    assert main(["estimate", "--model", "llama-7b", "--json"]) == 0
    estimate_keys = set(json.loads(capsys.readouterr().out)["plan"])
    for row in data["plans"]:
        assert set(row["plan"]) == estimate_keys
        assert isinstance(row["peak_bytes"], int) and isinstance(row["reserved_bytes"], int)
        assert isinstance(row["tokens_per_s"], float) and row["tokens_per_s"] > 0
        e = estimate("llama-7b", as_plan(row["plan"]), gpu="rtx4090")
        assert (e.peak_bytes, e.reserved_bytes) == (row["peak_bytes"], row["reserved_bytes"])
    assert data["explanation"] and data["limits"]["max_seq"] >= data["plans"][0]["plan"]["seq"]


def test_json_when_nothing_fits(capsys):
    assert main(["suggest", "--model", "llama2-70b", "--gpu", "rtx4090", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["plans"] == [] and data["nearest"]["options"]


@pytest.mark.parametrize("argv, needle", [
    (["--model", "llama-7b", "--gpu", "rtx4909"], "rtx4090"),
    (["--model", "llama-7", "--gpu", "rtx4090"], "llama-7b"),
    (["--model", "llama-7b", "--gpu", "rtx4090", "--gpus", "0"], "--gpus"),
    (["--model", "llama-7b", "--gpu", "rtx4090", "--gpus", "2", "--host-ram", "0"], "--host-ram"),
    (["--model", "llama-7b", "--gpu", "rtx4090", "--gpus", "2", "--sharding", "fsdp", "--offload", "optimizer"],
     "--offload optimizer"),
    (["--model", "llama-7b", "--gpu", "rtx4090", "--headroom", "1.5"], "--headroom"),
    (["--model", "llama-7b", "--gpu", "rtx4090", "--method", "full", "--rank", "8"], "--rank"),
    (["--model", "llama-7b", "--gpu", "rtx4090", "--method", "fulll"], "full, lora, qlora"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    code = main(["suggest", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err


def test_table_output(capsys):
    from rich.console import Console

    from vramplan.report.advice import render_advice

    console = Console(record=True, width=120)
    render_advice(console, advise("llama-7b", "rtx4090"))
    text = console.export_text()
    assert "Plans that fit" in text and "What each knob costs" in text and "MFU" in text
    assert "lora" in text and "all-linear" in text


def test_suggest_does_not_import_torch():
    code = ("import sys; from vramplan.cli import main; "
            "main(['suggest', '--model', 'llama-7b', '--gpu', 'rtx4090', '--json']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
