"""Measure a data-parallel step for real: N CPU processes joined by torch.distributed (gloo), each rank's live
bytes per phase, with the engine the plan names wrapped around the model the micro-trainer builds.

    measure_distributed(config, [plan, ...], world) -> one list of MeasuredStep (one per rank) per plan

Each rank is its own process, joined to the others through a file store; all plans run in the same processes,
one after the other. The ranks are forked from a `forkserver` that imported the stack once (the ~5 s of imports
are paid once per caller, not per rank; forking the caller itself could deadlock on a lock another of its
threads holds). As with any multiprocessing start method but `fork`, a calling script needs an
`if __name__ == "__main__":` guard. Without `forkserver` (or with `fork=False`) the ranks are fresh interpreters
(`python -m vramplan.measure.distributed JOB RANK`, as `torchrun` would start them). Per rank and plan: build
and prepare the model (build.py, trainer.prepare_model), wrap it, build the optimizer, train `steps` steps with
the micro-trainer's step loop under `MemoryTracker`, keep each phase's smallest peak after the first step (see STEPS).

Engines (what the estimator's `sharding` names, run through torch's own code):
- ddp: `DistributedDataParallel(model)` (default buckets, `gradient_as_bucket_view=False`);
- fsdp / fsdp_grad_op: `fully_shard(layer, reshard_after_forward=...)` for every decoder layer (transformers'
  `GradientCheckpointingLayer`), then `fully_shard(model)`; grad_op keeps every unit unsharded after forward;
- zero1: DDP + `torch.distributed.optim.ZeroRedundancyOptimizer` (torch's ZeRO-1: optimizer states split by
  whole parameters); the estimator prices that with `price_torch(..., engine="ddp_zero_redundancy")`.
DeepSpeed (zero2, zero3) is not run here; nor is CPU offload, which needs a device apart from the host.

What the tracker sees on gloo: every collective is a dispatcher op (FSDP2: `c10d._allgather_base_`,
`c10d._reduce_scatter_base_`; DDP: `c10d.allreduce_`, `c10d.broadcast_`, `c10d.allgather_`, even when the C++
reducer issues them) that writes in place into tensors made by ops the tracker also sees (FSDP's
`foreach_all_gather` output and `foreach_reduce` input, DDP's buckets). Gloo's own scratch memory is allocated in
its worker threads, outside the dispatcher, as NCCL's is outside the CUDA caching allocator; FSDP2's unsharded
parameters are freed and re-allocated with `UntypedStorage.resize_`, which the tracker follows.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

from vramplan.errors import MeasurementError
from vramplan.plan import TrainingPlan

ENGINES = ("ddp", "fsdp", "fsdp_grad_op", "zero1")
# The first step differs (optimizer states are created in it); the steps after it run the same program, so each
# phase's peak is the smallest over them. Not just the last: once, on a loaded CI machine (2 cores, pytest -n 2),
# rank 0 of a LoRA fsdp_grad_op run measured +81,152 bytes in backward (+14%), exactly one FSDP unit's all-gather
# buffer, and rank 1 did not; it never came back in 15 reruns here, with or without 3 busy cores beside them. Gloo
# runs each collective in a worker thread whose `Work` keeps the collective's tensors until that thread releases
# it, so a thread starved of CPU can make a buffer die late. That is host scheduling, not the program's memory;
# a late free that happens every step still shows in the minimum.
STEPS = 3
TIMEOUT_S = 300


def measure_distributed(config: dict, plans: list[TrainingPlan], world: int, *, steps: int = STEPS,
                        timeout_s: float = TIMEOUT_S, fork: bool = True) -> list[list]:
    """Run every plan on `world` gloo CPU ranks; returns per plan the MeasuredStep of each rank (rank order)."""
    for plan in plans:
        if plan.parallelism not in ENGINES:
            raise MeasurementError(f"sharding: {plan.parallelism} cannot run here; measurable: {', '.join(ENGINES)}")
        if plan.offload != "none":
            raise MeasurementError("offload: a CPU run has no device apart from the host; measure without offload")
    with tempfile.TemporaryDirectory(prefix="vramplan-dist-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"config": config, "plans": [p.to_dict() for p in plans], "world": world,
                                   "steps": steps, "store": str(Path(tmp) / "store"), "out": tmp}))
        run = _forked if fork and "forkserver" in multiprocessing.get_all_start_methods() else _spawned
        failures = run(job, world, timeout_s)
        if failures:
            rank, log = failures[0]
            raise MeasurementError(f"rank {rank} failed:\n{log[-3000:]}")
        return [[_load(Path(tmp) / f"rank{r}.plan{i}.json") for r in range(world)] for i in range(len(plans))]


def _forked(job: Path, world: int, timeout_s: float) -> list[tuple[int, str]]:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["vramplan.measure.distributed_preload"])
    procs = [ctx.Process(target=_rank_main, args=(str(job), rank), daemon=True) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    failures = []
    for rank, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            p.join()
        if p.exitcode != 0:
            log = job.with_name(f"rank{rank}.log")
            failures.append((rank, log.read_text() if log.exists() else f"exit code {p.exitcode}"))
    return failures


def _spawned(job: Path, world: int, timeout_s: float) -> list[tuple[int, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-m", "vramplan.measure.distributed", str(job), str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
             for rank in range(world)]
    failures = []
    for rank, proc in enumerate(procs):
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append((rank, out or ""))
    return failures


def _rank_main(job: str, rank: int) -> None:
    """A forked rank: run, and leave the traceback where the parent reads it."""
    try:
        run_rank(json.loads(Path(job).read_text()), rank)
    except BaseException:
        Path(job).with_name(f"rank{rank}.log").write_text(traceback.format_exc())
        raise

def _load(path: Path):
    from vramplan.measure.trainer import MeasuredStep

    return MeasuredStep.from_dict(json.loads(path.read_text()))


# The rank process -----------------------------------------------------------------------------------------------


def _warm(job: dict) -> None:
    """Import what the plans need before anything is measured (imports make tensors: see tracing.warm_caches)."""
    from vramplan.measure.tracing import warm_caches

    warm_caches(job["config"].get("model_type"))


def run_rank(job: dict, rank: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    _warm(job)
    dist.init_process_group("gloo", init_method=f"file://{job['store']}", rank=rank, world_size=job["world"])
    try:
        for i, fields in enumerate(job["plans"]):
            step = measure_rank(job["config"], TrainingPlan.from_dict(fields), job["steps"], seed=rank)
            Path(job["out"], f"rank{rank}.plan{i}.json").write_text(json.dumps(step.to_dict()))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def measure_rank(config: dict, plan: TrainingPlan, steps: int, seed: int = 0):
    """This rank's MeasuredStep of `plan` (the process group is up)."""
    import torch

    from vramplan.measure.build import build_model
    from vramplan.measure.tracker import MemoryTracker
    from vramplan.measure.trainer import (
        GC_GENERATION,
        PHASES,
        MeasuredStep,
        _train_step,
        prepare_model,
    )

    torch.manual_seed(seed)
    with warnings.catch_warnings(), MemoryTracker(record=True) as tracker:
        warnings.simplefilter("ignore")
        model = prepare_model(build_model(config, plan, device="cpu", trace=False), plan)
        model, optimizer = wrap(model, plan)
        gc.collect(GC_GENERATION)
        load = tracker.current_bytes
        runs = [_train_step(model, optimizer, plan, tracker, config, "cpu") for _ in range(steps)]
        steady = runs[1:] or runs
        peaks = {phase: min(r[0][phase] for r in steady) for phase in PHASES}
        snaps = {phase: min(steady, key=lambda r: r[0][phase])[1].get(phase, []) for phase in PHASES}
        gc.collect(GC_GENERATION)
        after = tracker.current_bytes
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model, optimizer
    gc.collect()
    return MeasuredStep(load_bytes=load, forward_peak_bytes=peaks["forward"], backward_peak_bytes=peaks["backward"],
                        optimizer_peak_bytes=peaks["optimizer"], after_step_bytes=after, trainable_params=trainable,
                        traced=False, peak_phase=max(PHASES, key=lambda p: peaks[p]),
                        snapshots={k: v[:20] for k, v in snaps.items()})


def wrap(model, plan: TrainingPlan):
    """(model wrapped by the plan's engine, its optimizer)."""
    import torch

    from vramplan.measure.optimizers import LR, build_optimizer

    mode = plan.parallelism
    if mode in ("ddp", "zero1"):
        model = torch.nn.parallel.DistributedDataParallel(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if mode == "ddp":
            return model, build_optimizer(params, plan)
        from torch.distributed.optim import ZeroRedundancyOptimizer

        if plan.optimizer not in ("adamw", "adamw_fused"):
            raise MeasurementError("optimizer: zero1 is measured with ZeroRedundancyOptimizer(AdamW) only")
        kind = {"foreach": True} if plan.optimizer == "adamw" else {"fused": True}
        return model, ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=LR, **kind)
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    keep = mode == "fsdp_grad_op"
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise MeasurementError("model: no decoder layers (GradientCheckpointingLayer) to shard")
    for layer in layers:
        fully_shard(layer, reshard_after_forward=not keep)
    fully_shard(model, reshard_after_forward=False if keep else None)
    if plan.optimizer.startswith(("paged", "adamw_8bit", "lion")):
        raise MeasurementError("optimizer: FSDP2 DTensor parameters need a torch optimizer (adamw, sgd, adafactor)")
    return model, build_optimizer([p for p in model.parameters() if p.requires_grad], plan)


if __name__ == "__main__":  # the rank process: python -m vramplan.measure.distributed JOB RANK
    run_rank(json.loads(Path(sys.argv[1]).read_text()), int(sys.argv[2]))
