"""Cold start of the CLI, side by side with a bare interpreter (issue 10, "Fast where users feel it").

Targets: `vramplan --help` and `vramplan models` at most 2.5x `python -c pass`; `vramplan estimate --model
llama2-7b --json` at most 4x. Each run is a fresh process; the commands are run round-robin (one of each per
round), so a load spike hits all of them alike, and each is summarised by its median. Prints the load average
before and after: wall-clock ratios mean little on a machine whose load is far above its core count, so the
CPU time of each child process (user + system, `getrusage(RUSAGE_CHILDREN)`) is shown beside them.

    python benchmarks/cli_startup.py [--runs 15] [--check] [--breakdown]

`--check` exits 1 when a ratio misses its target (for a person to run; no test times anything). `--breakdown`
adds where `estimate --json`'s CPU time goes, stage by stage in fresh processes (median over the rounds):
importing pydantic, its first model (of any kind: pydantic loads its schema machinery then), the plan model,
the model/GPU specs, the estimator, one estimate, its JSON.

Bytecode: an installed package has its .pyc files (pip compiles them at install), so the children run with
`PYTHONPYCACHEPREFIX` pointed at a temporary folder and without `PYTHONDONTWRITEBYTECODE`: the warm-up run writes
the .pyc there (the source tree is not touched) and the measured runs load them instead of compiling every module.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"--help": 2.5, "models": 2.5, "estimate --json": 4.0}


def _vramplan() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else `python -m vramplan`."""
    script = Path(sys.executable).with_name("vramplan")
    if script.exists():
        return [str(script)]
    found = shutil.which("vramplan")
    return [found] if found else [sys.executable, "-m", "vramplan"]


def commands() -> dict[str, list[str]]:
    cli = _vramplan()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "--help": [*cli, "--help"],
        "models": [*cli, "models"],
        "estimate --json": [*cli, "estimate", "--model", "llama2-7b", "--json"],
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process."""
    cpu, start = _cpu_s(), time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed, _cpu_s() - cpu


def measure(runs: int, pycache: str) -> dict[str, tuple[float, float]]:
    """name -> (median wall seconds, median CPU seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    cmds = commands()
    for argv in cmds.values():  # warm the page cache and the .pyc files: "cold" means a new process, not a new disk
        time_once(argv, env)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            samples[name].append(time_once(argv, env))
    return {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
            for name, values in samples.items()}


BREAKDOWN = """
import json, time
t = [time.process_time()]
import pydantic
t.append(time.process_time())
class First(pydantic.BaseModel):  # pydantic loads its schema machinery at the first model of any kind
    x: int = 0
First()
t.append(time.process_time())
import vramplan.plan
t.append(time.process_time())
import vramplan.hardware, vramplan.models
t.append(time.process_time())
import vramplan.api
t.append(time.process_time())
from vramplan.plan import make_plan
e = vramplan.api.estimate("llama2-7b", make_plan())
t.append(time.process_time())
from vramplan.report import estimate_json
json.dumps(estimate_json(e), indent=2)
t.append(time.process_time())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""
STAGES = ("import pydantic", "first model (any: pydantic)", "build TrainingPlan", "models + hardware",
          "estimator (vramplan.api)", "one estimate", "its JSON")


def breakdown(runs: int, env: dict[str, str]) -> None:
    """Median CPU seconds of each stage of `estimate --json`, each run a fresh process."""
    import json

    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", BREAKDOWN], capture_output=True, text=True, check=True, env=env)
        samples.append(json.loads(out.stdout))
    for i, name in enumerate(STAGES):
        print(f"  {name:28s} cpu {statistics.median(s[i] for s in samples) * 1000:6.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio misses its target")
    parser.add_argument("--breakdown", action="store_true", help="also: estimate --json's CPU time by stage")
    opts = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vramplan-pyc-") as pycache:
        medians = measure(opts.runs, pycache)
    load_after = os.getloadavg()
    base_wall, base_cpu = medians["python -c pass"]
    print(f"cores {os.cpu_count()}, load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
          f"(1 min), {opts.runs} rounds, medians")
    missed = []
    for name, (wall, cpu) in medians.items():
        ratio = wall / base_wall
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  target <= {target}x: {'ok' if ratio <= target else 'MISSED'}"
        if target is not None and ratio > target:
            missed.append(name)
        print(f"{name:18s} wall {wall * 1000:7.1f} ms {ratio:5.2f}x   cpu {cpu * 1000:6.1f} ms "
              f"{cpu / base_cpu:5.2f}x{verdict}")
    if opts.breakdown:
        print("estimate --json, by stage (fresh processes, medians):")
        breakdown(opts.runs, {**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"})
    return 1 if opts.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
