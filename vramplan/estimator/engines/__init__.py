"""Per-GPU memory of a data-parallel step: DDP, FSDP2 (`ddp_fsdp.py`) and DeepSpeed ZeRO (`deepspeed.py`).

Every GPU runs the single-GPU step on its own micro-batch, so activations are those of one GPU; what changes is
where the weights, gradients and optimizer states live, and the communication buffers each engine adds. Each
engine re-prices the single-GPU step's moments (`step.py`): every candidate peak keeps its activations and gets
the engine's weights, gradients and buffers at that point of the step; a phase's peak is its largest re-priced
moment. `sharding='none'` returns the single-GPU estimate untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.estimator.result import MemoryEstimate
from vramplan.estimator.single_gpu import StepEstimate, estimate_step
from vramplan.estimator.step_tensors import batch_bytes
from vramplan.estimator.trainers import step_plan
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan

if TYPE_CHECKING:  # pricing.py (and the engines) load for multi-GPU plans only
    from vramplan.estimator.engines.pricing import Priced, Repriced

# Engines that reduce every micro-batch's gradients into the sharded ones (FSDP2's default
# `set_requires_gradient_sync(True)`; DeepSpeed ZeRO-2/3 reduce in backward at every micro-batch), so gradient
# accumulation holds sharded gradients. DDP (accelerate's `no_sync`) and ZeRO-1 accumulate full gradients.
REDUCE_EVERY_MICRO_BATCH = ("fsdp", "fsdp_grad_op", "zero2", "zero3")


def estimate_memory(model: ModelSpec, plan: TrainingPlan) -> MemoryEstimate:
    """The per-GPU estimate of `plan` (the single-GPU estimate when the plan is one plain GPU)."""
    if plan.multi_gpu and plan.grad_accum > 1 and plan.parallelism in REDUCE_EVERY_MICRO_BATCH:
        # Each micro-batch's backward makes fresh gradients and reduces them into the sharded ones, which hold
        # the sum: the step is priced from a one-micro-batch step, with the held shards added by the engine, and
        # the other micro-batches' batches (fetched before the first forward: `batch_bytes`) on top.
        one_plan = plan.derive(grad_accum=1)
        one = estimate_step(model, one_plan)
        batches = batch_bytes(step_plan(plan)) - batch_bytes(step_plan(one_plan))
        return per_gpu_estimate(plan, one, reprice(model, plan, one), other_batches=batches)
    single = estimate_step(model, plan)
    if not plan.multi_gpu:
        return single.estimate
    return per_gpu_estimate(plan, single, reprice(model, plan, single))


def reprice(model: ModelSpec, plan: TrainingPlan, single: StepEstimate) -> Repriced:
    """The single-GPU step's moments re-priced by the plan's engine."""
    if plan.parallelism.startswith("zero"):
        from vramplan.estimator.engines.deepspeed import reprice_zero

        return reprice_zero(model, plan, single.moments, reference_bytes=single.reference_bytes)
    from vramplan.estimator.engines.ddp_fsdp import reprice_torch

    return reprice_torch(model, plan, single.moments, reference_bytes=single.reference_bytes)


def per_gpu_estimate(plan: TrainingPlan, single: StepEstimate, engine: Repriced,
                     other_batches: int = 0) -> MemoryEstimate:
    """Phase peaks from the re-priced moments (each phase: its largest), and the components of the peak.
    DPO's frozen reference model (without PEFT) is loaded whole on every GPU, then held as the engine holds it
    (`Repriced.reference_*`). `other_batches`: the batches of the other micro-batches when `single` is one
    micro-batch of an accumulating step (added to every phase after load; the components stay those of the one
    micro-batch, and no traced phases are given)."""
    from vramplan.estimator.engines.pricing import WEIGHT_KEYS

    static = engine.static
    phases = {"load": static.load + single.reference_bytes}
    best: dict[str, Priced] = {}
    best_total: dict[str, int] = {}  # best[phase].total, summed once per moment
    for p in engine.moments:
        if single.reference_bytes:  # the reference copy as a component of every moment
            ref = engine.reference_in_forward if p.where == "reference" else engine.reference_after_load
            p = p._replace(parts={**p.parts, "reference_model": ref})
        total = p.total
        if total > best_total.get(p.phase, -1):
            best[p.phase], best_total[p.phase] = p, total
    best["optimizer"] = engine.step
    if single.reference_bytes:
        best["optimizer"] = engine.step._replace(parts={**engine.step.parts,
                                                        "reference_model": engine.reference_after_load})
    for phase, p in best.items():
        phases[phase] = p.total
    peak_phase = max(phases, key=lambda k: phases[k])
    ref = {"reference_model": single.reference_bytes} if single.reference_bytes else {}
    if peak_phase in best:
        parts = dict(best[peak_phase].parts)
    else:
        parts = {**static.weights, **ref, "comm_buffers": static.buffers}
    parts = {k: v for k, v in parts.items() if v or k in WEIGHT_KEYS}
    components = {k: parts.get(k, 0) for k in (*WEIGHT_KEYS, "optimizer_states", "gradients",
                                                "optimizer_temporaries")}
    components.update({k: v for k, v in parts.items() if k not in components})
    one_phases, one_traced = single.fields["phases"], single.fields["traced_phases"]
    traced = None
    if one_traced and not other_batches:
        traced = {k: v + one_traced.get(k, one_phases[k]) - one_phases[k] for k, v in phases.items()}
    if other_batches:
        phases = {k: v + (other_batches if k != "load" else 0) for k, v in phases.items()}
    return MemoryEstimate(**{
        **single.fields, "components": components, "phases": phases, "peak_phase": peak_phase,
        "traced_phases": traced, "gpus": plan.gpus, "sharding": plan.parallelism,
        "host_offload_bytes": static.host, "plan": plan,
    })
