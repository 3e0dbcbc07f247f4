"""`estimate` works for every preset and method, and `--json` keeps its contract."""

from __future__ import annotations

import json

import pytest

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.models import presets
from vramplan.plan import make_plan


@pytest.mark.parametrize("slug", sorted(presets()))
def test_every_preset_and_method(slug):
    for method in ("full", "lora", "qlora"):
        e = estimate(slug, make_plan(method=method), gpu="h100-sxm")
        assert e.peak_bytes == max(e.phases.values()) > 0
        assert all(v >= 0 for v in e.components.items_bytes().values()), e.components
        assert e.reserved_bytes >= e.peak_bytes


def test_json_contract(capsys):
    assert main(["estimate", "--model", "llama2-7b", "--gpu", "rtx4090", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data["peak_bytes"], int) and isinstance(data["reserved_bytes"], int)
    assert set(data["phases"]) == {"load", "forward", "backward", "optimizer"}
    parts = {k: v for k, v in data["components"].items() if k != "engine_parts"}
    assert all(isinstance(v, int) for v in parts.values()) and isinstance(data["components"]["engine_parts"], dict)
    assert data["fits"] is True and data["plan"]["method"] == "qlora" and data["model"] == "llama2-7b"
    assert main(["estimate", "--model", "llama2-7b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reserved_bytes"] is None and data["fits"] is None


def test_compare_json_has_three_methods(capsys):
    assert main(["compare", "--model", "llama2-7b,qwen2.5-0.5b", "--json", "--rank", "16"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["plan"]["method"] for r in rows] == ["full", "lora", "qlora"] * 2
    assert rows[1]["plan"]["rank"] == 16 and rows[0]["plan"]["rank"] is None


def test_broken_gpu_profile_is_one_line(tmp_path, capsys):
    (tmp_path / "mygpu.toml").write_text("name = 'x'\nslug = 'mygpu'\n")
    code = main(["gpus", "--gpu-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "mygpu.toml" in err and len(err.strip().splitlines()) == 1


def test_paged_states_that_do_not_fit_the_headroom_are_reported_as_spilling(capsys):
    """bitsandbytes pages states of tensors >= 1e5 elements (cudaMallocManaged): `fits` leaves them out, and the
    part that exceeds the headroom is what pages to host RAM every step."""
    # the T4 has no bf16: fp32 master weights with fp16 autocast (HF Trainer fp16=True)
    plan = make_plan(method="full", optimizer="paged_adamw_32bit", seq=2048, batch=2, param_dtype="fp32",
                     mixed_precision="fp16")
    e = estimate("llama3.2-1b", plan, gpu="t4")
    assert e.fits and 0 < e.headroom_bytes < e.paged_bytes
    assert e.paged_spill_bytes == e.paged_bytes - e.headroom_bytes
    roomy = estimate("llama3.2-1b", plan, gpu="h100-sxm")
    assert roomy.paged_spill_bytes == 0 and estimate("llama3.2-1b", plan).paged_spill_bytes is None
    assert main(["estimate", "--model", "llama3.2-1b", "--method", "full", "--optimizer", "paged_adamw_32bit",
                 "--seq", "2048", "--batch", "2", "--gpu", "t4", "--param-dtype", "fp32", "--mixed-precision",
                 "fp16"]) == 0
    assert "page to host RAM every step" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_the_json_plan_builds_the_same_plan(capsys, method):
    """QLoRA's options are None off QLoRA, so `make_plan(**plan)` takes a plan's JSON back for every method."""
    assert main(["estimate", "--model", "llama-7b", "--method", method, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert make_plan(**plan).to_dict() == plan
    assert (plan["double_quant"] is None) == (method != "qlora") == (plan["kbit_upcast"] is None)


def test_results_are_typed():
    """issue 11: the plan is the `TrainingPlan`, components a model with named fields that refuses an unknown
    one, and a copy with new values is validated like the constructor's arguments."""
    from vramplan.errors import RecordError
    from vramplan.estimator.result import Components, MemoryEstimate
    from vramplan.plan import TrainingPlan

    e = estimate("llama2-7b", make_plan(method="lora", gpus=2, sharding="fsdp"))
    assert isinstance(e.plan, TrainingPlan) and isinstance(e.components, Components)
    assert e.plan.sharding == "fsdp" and e.components.unsharded_params > 0 and e.components.quantized_weights == 0
    with pytest.raises(TypeError):
        Components(not_a_component=1)
    with pytest.raises(RecordError, match="not_a_component: unknown field"):
        Components.from_dict({"not_a_component": 1})
    with pytest.raises(RecordError, match="activations: must be an integer"):
        e.replace(components={"activations": "5"})
    copy = e.replace(components={"activations": 5}, plan=e.plan.to_dict())
    assert isinstance(copy, MemoryEstimate) and isinstance(copy.plan, TrainingPlan)
    assert copy.components.activations == 5 and copy.components.base_weights == 0
    stored = Components.from_dict(e.to_dict()["components"])
    assert stored == e.components
