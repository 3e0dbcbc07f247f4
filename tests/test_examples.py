"""The examples run as a user would run them, so they never rot."""

import pathlib
import subprocess
import sys

import pytest

# Examples that run the real training stack on the CPU (a real QLoRA step through bitsandbytes' CPU kernels: tens of
# seconds on a loaded 2-core machine) belong to the slow tier.
REAL_RUNS = {"calibrate_plan.py"}
EXAMPLES = [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in REAL_RUNS else [])
            for p in sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))]


@pytest.mark.parametrize("path", EXAMPLES)
def test_example_runs(path):
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
