"""Cold start of the CLI, side by side with a bare interpreter (issue 10, "Fast where users feel it").

Targets: `vramplan --help` and `vramplan models` at most 2.5x `python -c pass`; `vramplan estimate --model
llama2-7b --json` at most 4x (`vramplan gpus` is shown beside them, and "stdlib floor": a bare interpreter importing
argparse, dataclasses, json and typing, the standard library the estimate path is written with, so the part of a
ratio that is vramplan's own shows). Each run is a fresh process; the commands are
run round-robin (one of each per round), so a load spike hits all of them alike, and each is summarised by its
median. Prints the load average before and after: wall-clock ratios mean little on a machine whose load is far
above its core count, so the CPU time of each child process (user + system, `getrusage(RUSAGE_CHILDREN)`) is shown
beside them.

    python benchmarks/cli_startup.py [--runs 15] [--venv DIR | --current] [--check] [--breakdown]

Which install is measured. By default a fresh virtual environment is made in a temporary folder and the working
tree is installed into it as the README says (`pip install <tree>`: a built wheel, dependencies from the package
index), then removed. `--venv DIR` keeps that environment in DIR (made and installed the first time; later runs
reinstall only the tree, `--force-reinstall --no-deps`, so they need no index). `--current` measures the
interpreter running this script instead. That is the wrong baseline when it is the development venv: the
editable install puts a `.pth` file in site-packages that imports setuptools' finder at every interpreter start,
`python -c pass` included (15-25 ms on 2 cores), so every ratio is flattered by a slower denominator; and the
editable finder resolves vramplan's modules differently from an installed wheel. Users run a wheel.

`--check` exits 1 when a ratio misses its target (for a person to run; no test times anything). `--breakdown`
adds where `estimate --json`'s CPU time goes, stage by stage in fresh processes of the measured interpreter
(median over the rounds), and whether pydantic or rich were imported on the way.

Bytecode: an installed package has its .pyc files (pip compiles them at install), so the children run with
`PYTHONPYCACHEPREFIX` pointed at a temporary folder and without `PYTHONDONTWRITEBYTECODE`: the warm-up run writes
the .pyc there (the install is not touched) and the measured runs load them instead of compiling every module.
Likewise `VRAMPLAN_CACHE_DIR` points into that folder, where the warm-up run keeps the TOML files' parsed form
(vramplan.datafiles.read_toml), as a user's first call of `vramplan models` does in ~/.cache/vramplan.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"--help": 2.5, "models": 2.5, "estimate --json": 4.0}
TREE = Path(__file__).resolve().parent.parent


def prepare_venv(folder: Path) -> Path:
    """The bin folder of a virtual environment in `folder` holding the working tree as a non-editable install."""
    python = folder / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if python.exists():
        print(f"reinstalling {TREE} into {folder} (--force-reinstall --no-deps)", flush=True)
        subprocess.run([*pip, "--force-reinstall", "--no-deps", str(TREE)], check=True)
    else:
        print(f"making a venv in {folder} and installing {TREE} into it (pip install <tree>)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([*pip, str(TREE)], check=True)
    return folder / "bin"


def commands(bindir: Path) -> dict[str, list[str]]:
    python, script = bindir / "python", bindir / "vramplan"
    cli = [str(script)] if script.exists() else [str(python), "-m", "vramplan"]
    return {
        "python -c pass": [str(python), "-c", "pass"],
        "--help": [*cli, "--help"],
        "models": [*cli, "models"],
        "gpus": [*cli, "gpus"],  # no target in issue 10; as light as --help is the aim (it reads TOML files too)
        "estimate --json": [*cli, "estimate", "--model", "llama2-7b", "--json"],
        # The standard library an estimate cannot do without as written (argparse for the flags, json for the
        # output, typing and dataclasses for the records and the estimator's tables): no vramplan code at all.
        "stdlib floor": [str(python), "-c", "import argparse, dataclasses, json, typing"],
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


def child_env(pycache: str) -> dict[str, str]:
    """This environment, writing bytecode and vramplan's cache under `pycache`, with no venv of ours activated."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONPYCACHEPREFIX"] = pycache
    env["VRAMPLAN_CACHE_DIR"] = os.path.join(pycache, "vramplan-cache")
    return env


def measure(cmds: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """name -> (median wall seconds, median CPU seconds)."""
    for argv in cmds.values():  # warm the page cache and the .pyc files: "cold" means a new process, not a new disk
        time_once(argv, env)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            samples[name].append(time_once(argv, env))
    return {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
            for name, values in samples.items()}


BREAKDOWN = """
import json, sys, time
t = [time.process_time()]
import argparse, vramplan.cli
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
print(json.dumps({"stages": [b - a for a, b in zip(t, t[1:])],
                  "heavy": [m for m in ("pydantic", "rich") if m in sys.modules]}))
"""
STAGES = ("argparse + vramplan.cli", "vramplan.plan", "models + hardware", "estimator (vramplan.api)",
          "one estimate", "its JSON")


def breakdown(python: Path, runs: int, env: dict[str, str]) -> None:
    """Median CPU seconds of each stage of `estimate --json`, each run a fresh process."""
    samples, heavy = [], []
    for _ in range(runs):
        out = subprocess.run([str(python), "-c", BREAKDOWN], capture_output=True, text=True, check=True, env=env)
        found = json.loads(out.stdout)
        samples.append(found["stages"])
        heavy = found["heavy"]
    for i, name in enumerate(STAGES):
        print(f"  {name:28s} cpu {statistics.median(s[i] for s in samples) * 1000:6.1f} ms")
    print(f"  imported on the way: {', '.join(heavy) or 'neither pydantic nor rich'}")


def report(medians: dict[str, tuple[float, float]], load: tuple[float, float], runs: int) -> list[str]:
    """Print the table; the names of the commands that miss their target."""
    base_wall, base_cpu = medians["python -c pass"]
    print(f"cores {os.cpu_count()}, load average before {load[0]:.2f} / after {load[1]:.2f} (1 min), "
          f"{runs} rounds, medians")
    missed = []
    for name, (wall, cpu) in medians.items():
        ratio = wall / base_wall
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  target <= {target}x: {'ok' if ratio <= target else 'MISSED'}"
        if target is not None and ratio > target:
            missed.append(name)
        print(f"{name:18s} wall {wall * 1000:7.1f} ms {ratio:5.2f}x   cpu {cpu * 1000:6.1f} ms "
              f"{cpu / base_cpu:5.2f}x{verdict}")
    return missed


def run(bindir: Path, opts: argparse.Namespace) -> int:
    python = bindir / "python"
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0], sys.prefix)"],
                             capture_output=True, text=True, check=True).stdout.split()
    print(f"measured: {bindir / 'vramplan'} (Python {version[0]}, environment {version[1]})")
    with tempfile.TemporaryDirectory(prefix="vramplan-pyc-") as pycache:
        env = child_env(pycache)
        load_before = os.getloadavg()[0]
        medians = measure(commands(bindir), opts.runs, env)
        missed = report(medians, (load_before, os.getloadavg()[0]), opts.runs)
        if Path(sys.executable).parent != bindir:  # the interpreter running this script, for comparison
            wall, cpu = measure({"pass": [sys.executable, "-c", "pass"]}, opts.runs, env)["pass"]
            print(f"(this script's interpreter {sys.executable}: python -c pass wall {wall * 1000:.1f} ms, "
                  f"cpu {cpu * 1000:.1f} ms)")
        if opts.breakdown:
            print("estimate --json, by stage (fresh processes, medians):")
            breakdown(python, opts.runs, env)
    return 1 if opts.check and missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds (default 15)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--venv", type=Path, metavar="DIR",
                       help="keep the clean venv in DIR (made the first time; the tree reinstalled each run)")
    where.add_argument("--current", action="store_true", help="measure this interpreter (not a clean install)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio misses its target")
    parser.add_argument("--breakdown", action="store_true", help="also: estimate --json's CPU time by stage")
    opts = parser.parse_args()
    if opts.current:
        return run(Path(sys.executable).parent, opts)
    if opts.venv:
        return run(prepare_venv(opts.venv.resolve()), opts)
    with tempfile.TemporaryDirectory(prefix="vramplan-venv-") as folder:
        return run(prepare_venv(Path(folder)), opts)


if __name__ == "__main__":
    sys.exit(main())
