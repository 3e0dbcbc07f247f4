"""benchmarks/gpu_campaign.py on CPU (the tracker is the meter): one tiny plan end to end, and the plan list the
campaign promises (>= 30 plans; full/LoRA/QLoRA, checkpointing on and off, sequence and batch sweeps, sdpa and
eager, no sharding; tiny to 3B models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_campaign  # noqa: E402

from vramplan.models import resolve_model  # noqa: E402
from vramplan.plan import make_plan  # noqa: E402


def test_the_campaign_covers_what_it_promises():
    plans = [make_plan(**options) for _, _, options in gpu_campaign.PLANS]
    assert len(plans) >= 30 and len({i for i, _, _ in gpu_campaign.PLANS}) == len(plans)
    assert {p.method for p in plans} == {"full", "lora", "qlora"}
    assert {p.grad_ckpt for p in plans} == {True, False} and {p.attn for p in plans} == {"sdpa", "eager"}
    assert len({p.seq for p in plans}) >= 4 and len({p.batch for p in plans}) >= 4
    assert all(p.gpus == 1 and p.parallelism == "none" for p in plans)
    sizes = {m: resolve_model(m).num_params for _, m, _ in gpu_campaign.PLANS if m != "tiny"}
    assert max(sizes.values()) < 4e9


@pytest.mark.slow
def test_one_tiny_plan_runs_on_cpu(tmp_path):
    out = tmp_path / "campaign.jsonl"
    assert gpu_campaign.main(["--device", "cpu", "--limit", "1", "--timed-steps", "1", "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["status"] == "ok", row.get("error")
    assert row["id"] == "tiny-full-fp32" and row["device"] == "cpu" and row["config"]["model_type"] == "llama"
    assert set(row["live_phases"]) == {"load", "forward", "backward", "optimizer"}
    assert row["live_peak_bytes"] == max(row["live_phases"][p] for p in ("forward", "backward", "optimizer"))
    assert row["tokens_per_s"] > 0 and row["versions"]["torch"] and row["versions"]["transformers"]
    assert "allocated_phases" not in row  # CPU: no allocator, no device figures
