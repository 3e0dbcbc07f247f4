"""The published-runs benchmark's invariants: every row is mapped or excused, and on rows whose setup is known
the device total is never more than 10% low, with a median error within 5% (issue 16's bar).

Oracle: measurements of real GPU runs (published-runs.csv, each row citing its source).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT.parent / "shared" / "published-runs.csv"


def _bench():
    spec = importlib.util.spec_from_file_location("published_runs", ROOT / "benchmarks" / "published_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["published_runs"] = module
    spec.loader.exec_module(module)
    return module


needs_csv = pytest.mark.skipif(not CSV.exists(), reason="published-runs.csv is not beside the repository")


@needs_csv
def test_every_row_is_mapped_or_excused():
    bench = _bench()
    mapping = bench.tomllib.loads(bench.PLANS.read_text())
    assert set(mapping) == set(bench.read_csv(CSV))
    for rid, m in mapping.items():
        assert m["comparable"] in ("exact", "upper", "no"), rid
        assert m["metric"] in ("allocated", "reserved", "device"), rid
        assert m["why"].strip(), rid
        if m["comparable"] != "no":
            assert {"model", "plan", "gpu"} <= set(m), rid


@needs_csv
@pytest.mark.slow
def test_device_totals_on_known_setups():
    rows = _bench().evaluate(CSV)
    device = [r for r in rows if r.comparable == "exact" and r.metric == "device"]
    assert len(device) >= 5
    errors = [r.error_high for r in device]
    assert min(errors) >= -0.10, [(r.id, f"{r.error_high:+.1%}") for r in device]
    assert abs(statistics.median(errors)) <= 0.05
    # the estimate at a setup's worst case never falls below what the real run reserved
    for r in rows:
        if r.comparable == "upper":
            assert r.error_high >= -0.01, r.id
        if r.estimate_low is not None:
            assert r.estimate_low <= r.estimate_high, r.id
