"""issue 10: `infer`, `merge`, `check` and `compare --infer-context` run on vramplan.record's records, and the
advisor's records (`suggest`) are records too: a fresh interpreter that runs them has never imported pydantic.

Asserted on sys.modules, never on time (the start-up timings are benchmarks/cli_startup.py's).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"

CHILD = """
import contextlib, io, json, sys
from vramplan.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes.append(main(argv))
import vramplan.recommend, vramplan.report.advice  # suggest's records and its JSON (a search takes seconds)
print(json.dumps({"codes": codes, "pydantic": sorted(m for m in sys.modules if m.split(".")[0] == "pydantic")}))
"""

COMMANDS = [
    ["infer", "--model", "qwen2.5-0.5b", "--rank", "8", "--gpu", "rtx4090", "--json"],
    ["infer", "--model", "qwen2.5-0.5b", "--compare"],
    ["merge", "--model", "qwen2.5-0.5b", "--method", "4bit", "--gpu", "rtx4090", "--json"],
    ["check", str(CONFIGS / "trl-sft-qwen25-1.5b.yaml"), "--json"],
    ["check", str(CONFIGS / "trl-sft-qwen25-1.5b.yaml")],
    ["compare", "--model", "qwen2.5-0.5b", "--infer-context", "1024", "--json"],
]


def test_inference_merge_check_and_the_advice_import_no_pydantic():
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(COMMANDS)], capture_output=True, text=True,
                          check=True, timeout=300)
    out = json.loads(done.stdout)
    assert out["codes"] == [0] * len(COMMANDS) and out["pydantic"] == []
