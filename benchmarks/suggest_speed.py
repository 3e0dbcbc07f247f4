"""Suggest speed: CPU seconds of the README's suggest commands, and of one allocator simulation.

    python benchmarks/suggest_speed.py [--runs 5] [--plans 12] [--reference] [--tree DIR] [--command I]

1. Each command (the README's two suggests; `--command 2..4`: a cold estimate --gpu, a transformers 4.x MoE
   estimate and suggest) runs `--runs` times in a fresh process; the median of its CPU seconds (user + system, from
   `resource.getrusage(RUSAGE_CHILDREN)`) is printed with the load average before and after: CPU seconds
   inflate less than wall seconds on a shared machine, but not zero (caches, frequency).
2. One simulation, in-process: the step's events (`step_runs`), their two schedules and the two replays
   `vramplan.device` runs per plan, for full-size plans of the kinds `suggest --model llama-7b --gpu rtx4090`
   prices; the median per plan of each part. `--reference` also times the frozen pre-fast-path simulation
   (tests/allocator_reference.py: old step loop and keyed replay) on the same plans and checks equal results.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    ["suggest", "--model", "llama-7b", "--gpu", "rtx4090"],
    ["suggest", "--model", "llama2-70b", "--gpu", "rtx4090", "--gpus", "2"],
    # by --command only (issue 10's other waits): a cold estimate --gpu, and transformers 4.x MoE (per-expert loops)
    ["estimate", "--model", "llama2-7b", "--gpu", "rtx4090", "--json"],
    ["estimate", "--model", "qwen3-30b-a3b", "--transformers", "4", "--gpu", "h100-sxm", "--method", "qlora"],
    ["suggest", "--model", "mixtral-8x7b", "--gpu", "h100-sxm", "--transformers", "4"],
]
DEFAULT_COMMANDS = (0, 1)


def cpu_seconds(args: list[str], tree: str | None = None) -> float:
    """CPU seconds (user + system) of `vramplan <args>` in a fresh process (`tree`: import vramplan from that
    source tree instead, e.g. an export of an older commit)."""
    env = os.environ | ({"PYTHONPATH": tree} if tree else {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, check=False, env=env, cwd=tree)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def plans(n: int) -> list:
    from vramplan.plan import make_plan

    out = []
    for case in range(n):
        batch, seq = ((1, 2048), (4, 1024), (2, 2048), (8, 512))[case // 3 % 4]
        method = ("lora", "qlora", "full")[case % 3]
        adapter = {} if method == "full" else {"rank": 64, "targets": "all-linear"}  # what suggest picks
        out.append(make_plan(method=method, batch=batch, seq=seq, **adapter,
                             grad_accum=16 // batch, optimizer=("adamw_fused", "paged_adamw_8bit")[case % 2],
                             grad_ckpt=case % 7 != 6))
    return out


def time_simulations(n: int, reference: bool) -> None:
    from vramplan.device import _gc_paused  # as `reserve_interval` runs a simulation
    from vramplan.models import resolve_model

    model = resolve_model("llama-7b")
    parts: dict[str, list[float]] = {"events": [], "schedules": [], "replays": [], "total": [], "reference": []}
    for plan in plans(n):
        with _gc_paused():
            fast = _time_one(model, plan, parts)
        if reference:  # as it ran before: GC on
            parts["reference"].append(_time_reference(model, plan, fast))
    print(f"one simulation, llama-7b, median of {n} plans (CPU s; the step traced cold, GC paused as in device):")
    for name, values in parts.items():
        if values:
            print(f"  {name:10s} {statistics.median(values):.3f}")


def _time_one(model, plan, parts: dict[str, list[float]]) -> list:
    """The parts `device._simulate` runs for one plan; returns the two replays' stats."""
    from vramplan.estimator import step_events as se
    from vramplan.estimator.replay import replay, schedule_runs
    from vramplan.models import ModelCache

    se._STEPS = ModelCache(9)  # a cold step trace, as for the first plan of each kind in a search
    t0 = time.process_time()
    runs, mark = se.step_runs(model, plan)  # as device._schedules
    runs.insert(0, (None, [("blas_workspace", 8 << 20)]))
    t1 = time.process_time()
    ops = (schedule_runs(runs, mark + 1)[0], schedule_runs(runs, mark + 1, lag=1)[0])
    t2 = time.process_time()
    fast = [replay(o) for o in ops]
    t3 = time.process_time()
    for name, t in (("events", t1 - t0), ("schedules", t2 - t1), ("replays", t3 - t2), ("total", t3 - t0)):
        parts[name].append(t)
    return fast


def _time_reference(model, plan, fast: list) -> float:
    """CPU seconds of the frozen old simulation (old step loop, keyed replay, linked blocks); checks equal results."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import allocator_reference as ref

    t0 = time.process_time()
    old = [("blas_workspace", 8 << 20), *ref.step_events(model, plan)]
    slow = [ref.replay(old, lag=lag) for lag in (0, 1)]
    seconds = time.process_time() - t0
    assert [(a.peak_reserved, a.peak_requested) for a in fast] == [
        (a.peak_reserved, a.peak_requested) for a in slow], plan
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plans", type=int, default=12)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--skip-commands", action="store_true")
    parser.add_argument("--skip-simulations", action="store_true")
    parser.add_argument("--tree", help="run the commands from this source tree (e.g. `git archive` of a commit)")
    parser.add_argument("--command", type=int, action="append", help="only these COMMANDS (indexes)")
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    if not args.skip_commands:
        for i, cmd in enumerate(COMMANDS):
            if i not in (args.command or DEFAULT_COMMANDS):
                continue
            runs = [cpu_seconds(cmd, args.tree) for _ in range(args.runs)]
            print(f"vramplan {' '.join(cmd)}: median {statistics.median(runs):.2f} CPU s "
                  f"(min {min(runs):.2f}, max {max(runs):.2f}, {args.runs} runs)")
    if not args.skip_simulations:
        time_simulations(args.plans, args.reference)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
