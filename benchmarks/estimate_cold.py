"""What the estimator adds to a cold `vramplan estimate --json`: its import, the first estimate, the JSON.

The estimator's share of issue 10's "estimate --json at most 4x `python -c pass`". Each round is a fresh process
that first imports what the estimator stands on (the plan and model records, the GPU profiles, the stdlib modules
they use: not the estimator's cost), then times, in CPU milliseconds (`time.process_time`):

- `import vramplan.api` (the estimator package and what it pulls in),
- resolving the preset (`models.resolve_model`: the preset index, owned by models.py),
- the first `estimate_memory` (layer programs replayed, caches empty), and a second one (caches warm),
- the JSON `estimate --json` prints (`report.estimate_json` + `json.dumps`);

and, in another fresh process each round, the whole path from a bare interpreter (`import vramplan.api`, one
`api.estimate`, its JSON): what a library user waits for, the modules the estimator stands on included.

Prints the medians, the load average before and after (2 cores shared by many processes make wall clocks noisy;
CPU time is steadier), and the estimator modules the first estimate leaves loaded, so a module made lazy can be
seen staying out.

    python benchmarks/estimate_cold.py [--runs 21] [--model llama2-7b] [--method qlora]

Run it with the interpreter of a clean, non-editable install (`pip install .` into a fresh venv) to see what a
user gets; an editable install measures the same code with a different import path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import sys, time
clock = time.process_time
import dataclasses, functools, json, typing, collections.abc, bisect, pathlib
import vramplan.plan, vramplan.models, vramplan.hardware, vramplan.errors, vramplan.units, vramplan.inventory
from vramplan.plan import make_plan
plan = make_plan(method=sys.argv[2])
before = set(sys.modules)
t = [clock()]
import vramplan.api
t.append(clock())
spec = vramplan.models.resolve_model(sys.argv[1])
t.append(clock())
from vramplan.estimator import estimate_memory
first = estimate_memory(spec, plan)
t.append(clock())
estimate_memory(spec, plan)
t.append(clock())
from vramplan import report
json.dumps(report.estimate_json(first), indent=2)
t.append(clock())
mods = sorted(m for m in set(sys.modules) - before if m.startswith("vramplan.estimator") or m == "vramplan.traits")
print(json.dumps({"ms": [(b - a) * 1000 for a, b in zip(t, t[1:])], "modules": mods, "peak": first.peak_bytes}))
"""
# The same path from a bare interpreter: what `vramplan.api` costs a library user, everything it stands on included.
WHOLE = """
import sys, time
clock = time.process_time
t0 = clock()
import json
import vramplan.api
from vramplan import report
from vramplan.plan import make_plan
e = vramplan.api.estimate(sys.argv[1], make_plan(method=sys.argv[2]))
json.dumps(report.estimate_json(e), indent=2)
print(json.dumps({"ms": (clock() - t0) * 1000}))
"""
STAGES = ("import vramplan.api", "resolve_model (preset)", "first estimate_memory", "second estimate_memory",
          "its JSON")


def run_child(model: str, method: str, env: dict[str, str], code: str = CHILD) -> dict:
    out = subprocess.run([sys.executable, "-c", code, model, method], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="fresh processes (default 21)")
    parser.add_argument("--model", default="llama2-7b")
    parser.add_argument("--method", default="qlora")
    opts = parser.parse_args()
    load_before = os.getloadavg()[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="vramplan-pyc-") as pycache:
        env["PYTHONPYCACHEPREFIX"] = pycache  # .pyc as an installed package has them (see cli_startup.py)
        run_child(opts.model, opts.method, env)  # warm-up: writes the .pyc files
        samples, whole = [], []
        for _ in range(opts.runs):  # alternated, so a load spike hits both alike
            samples.append(run_child(opts.model, opts.method, env))
            whole.append(run_child(opts.model, opts.method, env, WHOLE)["ms"])
    load_after = os.getloadavg()[0]
    print(f"{opts.model} {opts.method}: cores {os.cpu_count()}, load {load_before:.2f} -> {load_after:.2f}, "
          f"{opts.runs} fresh processes, median CPU ms")
    for i, name in enumerate(STAGES):
        values = [s["ms"][i] for s in samples]
        print(f"  {name:26s} {statistics.median(values):6.2f}   (min {min(values):.2f}, max {max(values):.2f})")
    own = [s["ms"][0] + s["ms"][2] + s["ms"][4] for s in samples]
    print(f"  {'import + first + JSON':26s} {statistics.median(own):6.2f}")
    print(f"  {'from a bare interpreter':26s} {statistics.median(whole):6.2f}   (import vramplan.api, estimate, JSON)")
    modules = samples[0]["modules"]
    print(f"estimator modules loaded ({len(modules)}): {' '.join(m.removeprefix('vramplan.') for m in modules)}")
    print(f"peak_bytes {samples[0]['peak']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
