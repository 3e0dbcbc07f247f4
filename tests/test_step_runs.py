"""The device's schedules, built from a step's runs (`step_runs`, `schedule_runs`: each step's events scheduled
under its own name, never rebuilt), are the schedules of the written-out sequence (`step_events_marked`, the
events the frozen reference is checked against in test_allocator_equivalence.py), op for op, with the same marks."""

from __future__ import annotations

import pytest

from vramplan import device
from vramplan.estimator.schedule import schedule_marked, schedule_runs
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


def _random_runs(rng) -> list:
    """Runs under a few names, some names again (a tail after its body), the same event list under several names
    (as each step's body), frees of keys never live or of another run's keys, empty runs, runs with no allocation."""
    shared = [(k % 7, rng.choice((512, 2 * MiB, 30 * MiB))) if rng.random() < 0.6 else (k % 7, -1) for k in range(40)]
    runs = []
    for _ in range(rng.randrange(1, 8)):
        name = rng.choice((None, 0, 1, 2, "x"))
        pick = rng.random()
        if pick < 0.35:
            events = shared
        elif pick < 0.45:
            events = []
        elif pick < 0.55:
            events = [(rng.randrange(9), -1) for _ in range(3)]
        else:
            events = [(rng.randrange(9), -1 if rng.random() < 0.4 else rng.choice((512, 3 * MiB)))
                      for _ in range(rng.randrange(1, 30))]
        runs.append((name, events))
    return runs


def test_random_runs_schedule_as_their_written_out_events():
    import random

    rng = random.Random(5)
    for _ in range(400):
        runs = _random_runs(rng)
        events = [e for name, run in runs for e in (run if name is None else [((name, k), n) for k, n in run])]
        mark = rng.randrange(len(runs) + 1)
        cut = sum(len(run) for _, run in runs[:mark])
        for lag in (0, 1, 2):
            assert schedule_runs(runs, mark, lag) == schedule_marked(events, cut, lag), (runs, mark, lag)
