"""The step's moments (estimator/step.py) and the plan context they replay (estimator/context.py), without torch."""

from __future__ import annotations

import pytest

from vramplan.architecture import traits_of
from vramplan.errors import UnsupportedArchitectureError
from vramplan.estimator import estimate_memory, step
from vramplan.estimator.context import layer_context, sparse_layers
from vramplan.estimator.single_gpu import estimate_single_gpu
from vramplan.models import preset_config, presets, resolve_model, spec_from_config
from vramplan.plan import make_plan

MOE_PRESETS = ("mixtral-8x7b", "qwen3-30b-a3b")


@pytest.mark.parametrize("name", MOE_PRESETS)
def test_released_moe_configs_route_every_layer_as_the_inventory_builds_it(name):
    """The layer replay reads the expert count and sizes from the config keys `Traits.moe` names; the inventory
    builds the expert tensors from the config as transformers does. The two must agree on every layer."""
    spec = resolve_model(name)
    assert traits_of(spec).moe is not None
    assert sparse_layers(spec.inventory) == frozenset(range(spec.num_layers))
    c = layer_context(spec, make_plan(method="lora"))
    gate_up = next(t for t in spec.inventory.tensors if t.role == "experts" and t.name.endswith("gate_up_proj"))
    assert gate_up.shape == (c.experts, 2 * c.moe_inter, spec.hidden_size)


@pytest.mark.parametrize("extra", [dict(mlp_only_layers=[1]), dict(decoder_sparse_step=2)])
def test_a_mix_of_dense_and_sparse_layers_is_refused_in_one_line(extra):
    cfg = {**preset_config("qwen3-30b-a3b"), "num_hidden_layers": 4, **extra}
    spec = spec_from_config(cfg, "qwen3-moe-mixed", "test")
    assert len(sparse_layers(spec.inventory)) < 4  # the inventory builds dense MLPs there
    with pytest.raises(UnsupportedArchitectureError, match="dense and sparse MoE layers is not modelled"):
        estimate_memory(spec, make_plan(method="lora"))


@pytest.mark.parametrize("options", [dict(method="full"), dict(method="lora", grad_ckpt=False),
                                     dict(method="qlora", grad_accum=2)])
def test_visiting_the_end_layers_bounds_every_layer(monkeypatch, options):
    """`layers_to_visit` claims that the moments are linear in the layer index between its ends and their
    neighbours; visiting every layer must give the same phase peaks."""
    plan = make_plan(**options)
    for name in ("llama3.2-1b", "gemma2-2b", "qwen3-30b-a3b"):
        spec = resolve_model(name)
        fast = estimate_single_gpu(spec, plan).phases
        monkeypatch.setattr(step, "layers_to_visit", lambda n: list(range(n)))
        assert estimate_single_gpu(spec, plan).phases == fast, name
        monkeypatch.undo()


def test_every_preset_has_a_context():
    """Every preset's plan context builds (the traits record names every config key it reads)."""
    for name in presets():
        spec = resolve_model(name)
        assert layer_context(spec, make_plan()).hidden == spec.hidden_size
