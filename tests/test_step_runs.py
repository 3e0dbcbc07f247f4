"""The device's schedules, built from a step's runs (`step_runs`, `schedule_runs`: each step's events scheduled
under its own name, never rebuilt), are the schedules of the written-out sequence (`step_events_marked`, the
events the frozen reference is checked against in test_allocator_equivalence.py), op for op, with the same marks."""

from __future__ import annotations

import pytest

from vramplan import device
from vramplan.estimator.replay import schedule_marked, schedule_runs
from vramplan.estimator.step_events import step_events_marked, step_runs
from vramplan.models import preset_config, spec_from_config
from vramplan.plan import make_plan
from vramplan.units import MiB

PLANS = [
    {"method": "lora", "batch": 2, "seq": 128},
    {"method": "lora", "batch": 1, "seq": 96, "grad_accum": 3, "optimizer": "sgd"},  # no optimizer states
    {"method": "qlora", "batch": 2, "seq": 128, "grad_ckpt": True, "optimizer": "paged_adamw_8bit"},
    {"method": "full", "batch": 3, "seq": 64, "grad_accum": 2, "grad_ckpt": True, "ckpt_reentrant": True},
    {"method": "full", "batch": 1, "seq": 128, "optimizer": "adafactor"},
]


def _small(slug: str):
    return spec_from_config(preset_config(slug) | {"num_hidden_layers": 2}, f"{slug}-2l", slug)


@pytest.mark.parametrize("slug", ["llama3.2-1b", "qwen3-30b-a3b", "gemma2-2b"])
@pytest.mark.parametrize("options", PLANS, ids=lambda o: "-".join(map(str, o.values())))
def test_runs_schedule_as_the_written_out_events(slug, options):
    model, plan = _small(slug), make_plan(**options)
    for shards in (1, 4):
        events, mark = step_events_marked(model, plan, shards=shards)
        runs, at = step_runs(model, plan, shards=shards)
        assert [e for name, run in runs for e in (run if name is None else [((name, k), n) for k, n in run])] == events
        assert sum(len(run) for _, run in runs[:at]) == mark
        events.insert(0, ("blas_workspace", 8 * MiB))
        built = device._schedules(model, plan, shards, 8 * MiB)
        for lag in (0, 1):
            assert (built[lag], built[2 + lag]) == schedule_marked(events, mark + 1, lag), (shards, lag)
            assert schedule_runs([(None, events)], 1, lag) == schedule_marked(events, len(events), lag)
