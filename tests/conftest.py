"""Test-wide setup: hermetic, offline runs, and the fast/slow tiers.

Tiers: pyproject.toml's `addopts` deselects `@pytest.mark.slow` (full-size traces, gloo runs, real CPU training
steps, the wheel build); `pytest -m slow` runs the slow tier, `pytest -m ""` both. A test named by its node id
(`pytest tests/test_x.py::test_y`) runs whatever its tier. No test asserts wall-clock time: benchmarks/ measures speed.

Hermetic: before any test module imports vramplan, the environment is pointed away from the user's files, for this
process and every subprocess a test starts (each xdist worker gets its own folder):
- `VRAMPLAN_CACHE_DIR` (derived specs of fallback architectures) and `VRAMPLAN_CALIBRATION_DB` (calibration records)
  go to a temporary folder, so a test never reads a stale record from `~/.cache/vramplan` nor writes one there;
- `VRAMPLAN_GPU_DIR` is dropped: the user's own GPU profiles must not change what the built-in ones give;
- `HF_HUB_OFFLINE=1`: tests run offline (a test that wants a hub look-up sets its own cache and flags).
Tests that check these variables set their own with `monkeypatch`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_STATE = tempfile.mkdtemp(prefix="vramplan-tests-")
os.environ["VRAMPLAN_CACHE_DIR"] = os.path.join(_STATE, "cache")
os.environ["VRAMPLAN_CALIBRATION_DB"] = os.path.join(_STATE, "calibrations.sqlite3")
os.environ.pop("VRAMPLAN_GPU_DIR", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    """Asking for a test by its node id runs it: the default tier filter applies to files and folders only."""
    if config.option.markexpr == "not slow" and any("::" in arg for arg in config.args):
        config.option.markexpr = ""


def pytest_unconfigure(config):
    shutil.rmtree(_STATE, ignore_errors=True)
