"""The estimator against every committed GPU campaign row (benchmarks/data/campaign-*.jsonl, written by
benchmarks/gpu_campaign.py on a real GPU): the allocated peak, and tokens/s against the speed model's interval.
Skips when no campaign data is committed (none so far: no GPU has been lent to this project's sessions)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from vramplan.errors import UnknownGpuError
from vramplan.estimator import estimate_memory
from vramplan.hardware import resolve_gpu
from vramplan.models import resolve_model, spec_from_config
from vramplan.plan import TrainingPlan
from vramplan.speed import step_time

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "data"
ROWS = [json.loads(line) for path in sorted(DATA.glob("campaign-*.jsonl")) for line in path.read_text().splitlines()
        if line.strip()]
CUDA_OK = [r for r in ROWS if r.get("status") == "ok" and str(r.get("device", "")).startswith("cuda")]

pytestmark = pytest.mark.skipif(not CUDA_OK, reason="no GPU campaign data committed under benchmarks/data/")


def _spec_plan(row: dict):
    spec = (spec_from_config(row["config"], "tiny", "campaign") if row["model"] == "tiny"
            else resolve_model(row["model"]))
    return spec, TrainingPlan(**row["plan"])


@pytest.mark.parametrize("row", CUDA_OK, ids=[r["id"] for r in CUDA_OK])
def test_allocated_peak_within_10_percent(row):
    spec, plan = _spec_plan(row)
    estimate = estimate_memory(spec, plan)
    measured = max(row["allocated_phases"][p] for p in ("forward", "backward", "optimizer"))
    assert abs(estimate.peak_bytes - measured) / measured <= 0.10, (estimate.peak_bytes, measured)


def test_tokens_per_s_within_the_interval_and_median_error():
    errors, outside = [], []
    for row in CUDA_OK:
        try:
            gpu = resolve_gpu(row["versions"]["gpu"])
        except UnknownGpuError:
            continue
        spec, plan = _spec_plan(row)
        est = step_time(spec, plan, gpu)
        errors.append(abs(est.tokens_per_s - row["tokens_per_s"]) / row["tokens_per_s"])
        if not 0.75 * est.tokens_per_s_low <= row["tokens_per_s"] <= 1.25 * est.tokens_per_s_high:
            outside.append(row["id"])
    if not errors:
        pytest.skip("the campaign's GPU has no vramplan profile")
    assert statistics.median(errors) <= 0.15 and len(outside) <= len(errors) // 10, (errors, outside)
