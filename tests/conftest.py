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

import datetime
import os
import shutil
import tempfile
import zlib

_STATE = tempfile.mkdtemp(prefix="vramplan-tests-")
os.environ["VRAMPLAN_CACHE_DIR"] = os.path.join(_STATE, "cache")
os.environ["VRAMPLAN_CALIBRATION_DB"] = os.path.join(_STATE, "calibrations.sqlite3")
os.environ.pop("VRAMPLAN_GPU_DIR", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    """Asking for a test by its node id runs it: the default tier filter applies to files and folders only."""
    if config.option.markexpr == "not slow" and any("::" in arg for arg in config.args):
        config.option.markexpr = ""


def _grid_share() -> tuple[int, int] | None:
    """`VRAMPLAN_GRID_SAMPLE=N`: run about 1/N of the full-size traced grid cases (tests/accuracy), a share that
    rotates with the UTC date, so that N days of CI runs trace every case. Unset: every case."""
    n = int(os.environ.get("VRAMPLAN_GRID_SAMPLE", "1") or 1)
    return None if n <= 1 else (datetime.date.today().toordinal() % n, n)


def pytest_collection_modifyitems(config, items):
    """Keep the rotating share of the grid's `case` parameters (each trace takes 20 s to minutes on 2 cores)."""
    share = _grid_share()
    if share is None:
        return
    turn, n = share
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec else None
        in_grid = case is not None and "tests/accuracy/" in item.nodeid.replace("\\", "/")
        if in_grid and zlib.crc32(str(getattr(case, "id", case)).encode()) % n != turn:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        config._vramplan_grid_note = (f"grid sample: share {turn + 1} of {n} (rotates daily), {len(dropped)} "
                                      "traced cases left for other days; VRAMPLAN_GRID_SAMPLE=1 runs them all")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    note = getattr(config, "_vramplan_grid_note", None)
    if note:
        terminalreporter.write_line(note)


def pytest_unconfigure(config):
    shutil.rmtree(_STATE, ignore_errors=True)
