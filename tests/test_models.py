"""vramplan.models: the model fingerprint and the one cache keyed on it (units, static memory, step sequences and
allocator replays all memoise through `ModelCache`)."""

from __future__ import annotations

from vramplan.models import ModelCache, preset_config, resolve_model, spec_from_config


def test_specs_of_one_config_share_a_fingerprint_and_others_do_not():
    a = resolve_model("llama3.2-1b")
    b = spec_from_config(preset_config("llama3.2-1b"), "renamed", "test")
    c = spec_from_config({**preset_config("llama3.2-1b"), "num_hidden_layers": 2}, "two layers", "test")
    assert a is not b and a.fingerprint == b.fingerprint
    assert c.fingerprint != a.fingerprint


def test_the_cache_computes_once_per_model_and_key_and_clears_when_full():
    a, c = resolve_model("llama3.2-1b"), resolve_model("qwen2.5-0.5b")
    cache, calls = ModelCache(3), []

    def compute(tag):
        calls.append(tag)
        return tag

    assert [cache.get(a, 1, lambda: compute("a1")), cache.get(a, 1, lambda: compute("again")),
            cache.get(c, 1, lambda: compute("c1")), cache.get(a, None, lambda: compute("none"))] == \
        ["a1", "a1", "c1", "none"]
    assert calls == ["a1", "c1", "none"]
    cache.get(a, 2, lambda: compute("a2"))  # the fourth entry: the cache starts over
    assert cache.get(a, 1, lambda: compute("a1 again")) == "a1 again"


def test_the_estimators_caches_hold_no_model_objects():
    from vramplan.api import estimate
    from vramplan.device import _CACHE, _SCHEDULES
    from vramplan.estimator.partition import _CACHE as UNITS
    from vramplan.estimator.step_events import _STEPS
    from vramplan.estimator.weights import _STATIC_CACHE
    from vramplan.plan import make_plan

    estimate("qwen2.5-0.5b", make_plan(method="lora", seq=128), gpu="rtx4090")
    for cache in (_CACHE, _SCHEDULES, UNITS, _STEPS, _STATIC_CACHE):
        assert isinstance(cache, ModelCache)
        assert all(isinstance(fp, str) for fp, _ in cache._entries)
