"""The advice for one request: the ranked plans, and what explains them.

For the winner: the largest sequence length and micro-batch that still fit (bisection on the estimate, which
grows with both), what each knob costs in memory and speed, and the LoRA/QLoRA contrast. When nothing fits: for
each method its leanest plan, the smallest single GPU that holds it, its size with the optimizer states off the
card, how many of the asked GPUs FSDP would need (with and without CPU offload), and the longest sequence that
fits the card.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vramplan.architecture import traits_of
from vramplan.errors import PlanError
from vramplan.estimator import MemoryEstimate
from vramplan.estimator.liger import liger_kernels
from vramplan.hardware import GpuProfile, check_runs_on, load_profiles
from vramplan.plan import TrainingPlan
from vramplan.record import Record
from vramplan.search import check_pins, first_true, last_true, least_on_card, search, variants
from vramplan.search_space import (
    ADAPTERS,
    DIST_CHOICES,
    METHOD_TIER,
    Candidate,
    Probe,
    Request,
    model_max_seq,
    seq_ladder,
    takes_bnb_optimizers,
)
from vramplan.speed import DEQUANT_BANDWIDTH_FRACTION
from vramplan.vocab import engine_words

BATCH_CAP = 1024
GPU_COUNT_CAP = 1024  # the largest data-parallel job the nothing-fits advice searches


class Recommendation(Record):
    """One recommended plan: its estimate on the GPU (`vramplan.api.estimate`), paged states, and speed."""

    estimate: MemoryEstimate
    gpu_bytes: int  # per GPU: reserved + CUDA context + paged optimizer states
    host_bytes: int  # host RAM for offloaded state, all GPUs together
    tokens_per_s: float
    step_time_s: float
    dequant_share: float  # fraction of a micro-batch spent dequantizing 4-bit weights


class Limits(Record):
    max_seq: int | None  # the largest sequence length that fits at the plan's micro-batch (None: not even 1)
    seq_cap: int  # the model's positions: max_seq == seq_cap means the model, not memory, stops it
    max_batch: int | None  # the largest micro-batch that fits at the plan's sequence length
    batch_cap: int


class KnobCost(Record):
    knob: str
    plan: dict
    gpu_bytes_delta: int
    host_bytes: int  # host RAM the changed plan offloads to (all GPUs)
    speed_ratio: float  # tokens/s relative to the winner
    fits: bool


class Contrast(Record):
    """The other adapter method next to the winner: LoRA on a 16-bit base vs QLoRA."""

    plan: dict
    gpu_bytes: int
    host_bytes: int
    tokens_per_s: float
    speed_ratio: float
    fits: bool
    limits: Limits | None


class MethodNeeds(Record):
    """What one method would need when nothing fits."""

    method: str
    plan: dict
    gpu_bytes: int
    host_bytes: int  # host RAM for offloaded state, all GPUs together
    host_fits: bool  # host_bytes within the request's host RAM
    weights_bytes: int  # the load phase: what the card holds before the first step
    smallest_gpu: str | None  # None also when the plan's host RAM does not fit
    smallest_gpu_bytes: int | None = None  # what the plan takes on that GPU (its context, its dtype version)
    smallest_gpu_plan: dict | None = None  # the version priced there when it differs (bf16 on a bf16 card)
    same_size_gpus: list[str]
    offloaded_gpu_bytes: int | None  # with the optimizer states off the GPU (ZeRO-Offload), if that matters
    fsdp_gpus: int | None  # the fewest GPUs of this kind that fit the plan with FSDP (None: not even 1024)
    fsdp_offload_gpus: int | None  # the same with FSDP's CPU offload of parameters, gradients and states


class Nearest(Record):
    options: list[MethodNeeds]
    shorter_seq: int | None  # the longest sequence below the asked one at which the leanest plan fits
    shorter_seq_method: str | None


class Advice(Record):
    model: str
    gpu: str
    gpus: int
    host_ram_bytes: int | None
    usable_bytes: int
    limit_bytes: int
    objective: str
    headroom: float
    effective_batch: int
    plans: list[Recommendation]
    limits: Limits | None
    knobs: list[KnobCost]
    contrast: Contrast | None
    blockers: list[MethodNeeds]  # better-quality methods that do not fit, with what they would need
    nearest: Nearest | None
    assumptions: dict[str, Any]
    evaluated: int
    seconds: float


def replan(plan: TrainingPlan, **changes: Any) -> TrainingPlan:
    """`plan` with some fields changed; fields the new method does not take are reset to their defaults."""
    method = changes.pop("method", plan.method)
    if "rank" in changes:
        changes["alpha"] = None
    if method != "full" and plan.method == "full":
        changes.update(targets=ADAPTERS[-1][0], rank=ADAPTERS[-1][1], alpha=None)
    if "sharding" in changes and method == "qlora":
        # the storage dtype and the kbit upcast follow the sharding (TrainingPlan.storage_dtype, make_plan)
        changes.update(quant_storage=None, kbit_upcast=changes.get("kbit_upcast"))
    return plan.for_method(method, **changes)


def _largest(probe: Probe, build: Callable[[int], TrainingPlan], lo: int, cap: int) -> int | None:
    """The largest n in [lo, cap] whose plan fits (memory grows with n): doubling, then bisection."""
    return last_true(lambda n: probe.fits(build(n)), lo, cap, gallop=True)


def solve_limits(probe: Probe, plan: TrainingPlan) -> Limits:
    cap = model_max_seq(probe.req.model)
    max_seq = _largest(probe, lambda s: plan.derive(seq=s), min(plan.seq, cap), cap)
    max_batch = _largest(probe, lambda b: plan.derive(batch=b), plan.batch, BATCH_CAP)
    return Limits(max_seq=max_seq, seq_cap=cap, max_batch=max_batch, batch_cap=BATCH_CAP)


def knob_costs(probe: Probe, best: Candidate) -> list[KnobCost]:
    p, b = best.plan, probe.req.effective_batch
    changes: list[tuple[str, dict]] = [
        (f"gradient checkpointing {'off' if p.grad_ckpt else 'on'}", {"grad_ckpt": not p.grad_ckpt}),
    ]
    bigger = next((d for d in range(p.batch + 1, b + 1) if b % d == 0), None)
    if bigger:
        changes.append((f"micro-batch {bigger} x {b // bigger} accumulation",
                        {"batch": bigger, "grad_accum": b // bigger}))
    if p.seq * 2 <= model_max_seq(probe.req.model):
        changes.append((f"sequence length {p.seq * 2}", {"seq": p.seq * 2}))
    labels = {"full": "full fine-tuning", "lora": "LoRA on the 16-bit base", "qlora": "QLoRA (NF4 + double quant)"}
    for method in probe.methods:
        if method != p.method:
            opt = p.optimizer if p.optimizer in probe.optimizer_choices(method) else probe.optimizer_choices(method)[0]
            changes.append((labels[method], {"method": method, "optimizer": opt}))
    if p.uses_lora and (p.targets, p.rank) in ADAPTERS:
        i = ADAPTERS.index((p.targets, p.rank))
        for j in (i + 1, i - 1):
            if 0 <= j < len(ADAPTERS):
                changes.append((f"LoRA {ADAPTERS[j][0]} r={ADAPTERS[j][1]}",
                                {"targets": ADAPTERS[j][0], "rank": ADAPTERS[j][1]}))
    eight_bit = "8bit" in (p.optimizer or "")
    if takes_bnb_optimizers(p.parallelism):
        changes.append(("AdamW 32-bit (fused)" if eight_bit else "paged AdamW 8-bit",
                        {"optimizer": "adamw_fused" if eight_bit else "paged_adamw_8bit"}))
    if p.method == "qlora":
        changes.append((f"double quant {'off' if p.double_quant else 'on'}", {"double_quant": not p.double_quant}))
    if not p.liger and liger_kernels(traits_of(probe.req.model), p.trainer):  # estimator/liger.py
        changes.append(("Liger kernels (use_liger_kernel)", {"liger": True}))
    if p.trainer != "trl-sft":  # TRL's fused LM head never builds the fp32 logits (estimator/losses.py)
        changes.append(("TRL SFTTrainer (fused LM-head loss)", {"trainer": "trl-sft", "loss_type": "nll", **(
            {"kbit_upcast": False} if p.method == "qlora" else {})}))
    changes.append(("eager attention" if p.attn != "eager" else "sdpa attention",
                    {"attn": "eager" if p.attn != "eager" else "sdpa"}))
    if p.gpus > 1:
        for sharding, offload in DIST_CHOICES:
            if (sharding, offload) != (p.parallelism, p.offload):
                choices = probe.optimizer_choices(p.method, (sharding, offload))
                opt = p.optimizer if p.optimizer in choices else choices[0]
                changes.append((engine_words(sharding, offload), {"sharding": sharding, "offload": offload,
                                                                 "optimizer": opt,
                                                                 "kbit_upcast": probe.req.pinned.get("kbit_upcast")}))
    out = []
    for label, change in changes:
        try:
            changed = replan(p, **change)
        except PlanError:  # a combination the plan refuses (e.g. --load-in-8bit with DDP): no such knob here
            continue
        alt = probe.evaluate(changed)  # an error here is a bug, not a missing knob: let it through
        out.append(KnobCost(knob=label, plan=alt.plan.to_dict(), gpu_bytes_delta=alt.gpu_bytes - best.gpu_bytes,
                            host_bytes=alt.host_bytes,
                            speed_ratio=alt.tokens_per_s / best.tokens_per_s, fits=probe.fits_candidate(alt)))
    return out





def contrast(probe: Probe, best: Candidate) -> Contrast | None:
    """QLoRA beside a LoRA winner (what it buys, what it costs), or LoRA beside a QLoRA winner."""
    if best.plan.method == "full":
        return None  # the knob costs list LoRA and QLoRA beside full fine-tuning
    other = "qlora" if best.plan.method == "lora" else "lora"
    if other not in probe.methods:
        return None
    # the QLoRA recipe's paged 8-bit AdamW, where the engine takes it
    bnb = takes_bnb_optimizers(best.plan.parallelism)
    opt = "paged_adamw_8bit" if other == "qlora" and bnb else best.plan.optimizer
    try:
        changed = replan(best.plan, method=other, optimizer=opt)
    except PlanError:  # a combination the plan refuses for the other method
        return None
    alt = probe.evaluate(changed)
    fits = probe.fits_candidate(alt)
    return Contrast(plan=alt.plan.to_dict(), gpu_bytes=alt.gpu_bytes, host_bytes=alt.host_bytes,
                    tokens_per_s=alt.tokens_per_s,
                    speed_ratio=alt.tokens_per_s / best.tokens_per_s, fits=fits,
                    limits=solve_limits(probe, alt.plan) if fits else None)


def leanest_candidate(probe: Probe, method: str, seq: int) -> Candidate:
    """A method's leanest plan at `seq` (smallest adapter, smallest micro-batch), fitting or not."""
    mb = probe.batch_choices()[0]
    adapter = None if method == "full" else ADAPTERS[0]
    cands = [probe.evaluate(probe.plan(method, adapter, seq, ck, opt, mb, dist))
             for ck, opt, dist in variants(probe, method)]
    return least_on_card(cands, lambda c: (c.host_bytes, -c.tokens_per_s))


def smallest_gpus(probe: Probe, plan: TrainingPlan) -> list[tuple[GpuProfile, int, TrainingPlan]]:
    """(GPU, bytes on it, the plan version priced) for the smallest GPUs `plan` fits with the headroom (the
    smallest fitting one and those of the same memory), by `estimate(gpu=...)`'s device model on each card;
    bf16 cards get the bf16 version of the plan (so its bytes are that version's, not `plan`'s)."""
    versions = {False: plan}
    if not probe.req.gpu.bf16_supported and "param_dtype" not in probe.req.pinned:
        versions = {False: plan, True: replan(plan, param_dtype="bf16", mixed_precision=None)}
    elif plan.activation_dtype == "bf16":
        versions = {True: plan}
    out: list[tuple[GpuProfile, int, TrainingPlan]] = []
    for g in sorted(load_profiles(probe.req.gpu_dirs).values(), key=lambda g: (g.usable_bytes, g.slug)):
        version = versions.get(g.bf16_supported, versions.get(False))
        if version is None or (out and g.memory_bytes != out[0][0].memory_bytes):
            continue
        try:
            check_runs_on(version, g)
        except PlanError:  # a plan this card cannot run (bf16 or flash-attn 2 before Ampere): not a candidate
            continue
        cand = probe.evaluate(version, g)  # an estimate that fails here is a bug: not swallowed
        if probe.on_card(cand, probe.limit_for(g)):
            out.append((g, cand.gpu_bytes, version))
    return out


def method_needs(probe: Probe, cand: Candidate) -> MethodNeeds:
    e = cand.estimate
    host_fits = probe.host_fits(cand)
    fits_on = smallest_gpus(probe, cand.plan) if host_fits else []
    smallest, smallest_bytes, version = fits_on[0] if fits_on else (None, None, None)
    same = [g.slug for g, _, _ in fits_on[1:] if smallest and g.memory_bytes == smallest.memory_bytes]
    offloaded = None
    if cand.plan.gpus == 1 and e.components.optimizer_states + e.paged_bytes > 0.05 * cand.gpu_bytes:
        offloaded = probe.evaluate(replan(cand.plan, optimizer="sgd")).gpu_bytes
    return MethodNeeds(method=cand.plan.method, plan=cand.plan.to_dict(), gpu_bytes=cand.gpu_bytes,
                  host_bytes=cand.host_bytes, host_fits=host_fits, weights_bytes=e.phases["load"],
                  smallest_gpu=smallest.slug if smallest else None, same_size_gpus=same,
                  smallest_gpu_bytes=smallest_bytes,
                  smallest_gpu_plan=version.to_dict() if version is not None and version != cand.plan else None,
                  offloaded_gpu_bytes=offloaded, fsdp_gpus=fewest_gpus(probe, cand.plan, "none"),
                  fsdp_offload_gpus=fewest_gpus(probe, cand.plan, "params"))


def fewest_gpus(probe: Probe, plan: TrainingPlan, offload: str) -> int | None:
    """The fewest GPUs of the asked kind on which `plan` fits with FSDP (`offload`: none or params): per-GPU
    memory falls as the GPUs grow (weights, gradients and states split; activations stay), so: doubling, then
    bisection. Host RAM is not a limit here (the answer is a machine to look for); the plan's own GPU count
    is not a bound either."""
    def fits(n: int) -> bool:
        sharded = replan(plan, gpus=n, sharding="fsdp", offload=offload, optimizer="adamw_fused",
                         grad_accum=max(1, -(-probe.req.effective_batch // (n * plan.batch))))
        return probe.on_card(probe.evaluate(sharded), probe.limit_bytes)

    return first_true(fits, 2, GPU_COUNT_CAP)


def nearest(probe: Probe) -> Nearest:
    seq = seq_ladder(probe.req)[0]
    leanest_per_method = [leanest_candidate(probe, m, seq) for m in probe.methods]
    leanest = min(leanest_per_method, key=lambda c: c.gpu_bytes)
    shorter = None
    if seq > 1:
        shorter = _largest(probe, lambda s: leanest.plan.derive(seq=s), 1, seq - 1)
    return Nearest(options=[method_needs(probe, c) for c in leanest_per_method], shorter_seq=shorter,
                   shorter_seq_method=leanest.plan.method if shorter else None)


def _recommendation(probe: Probe, c: Candidate) -> Recommendation:
    e = c.device  # what `estimate(model, plan, gpu=...)` returns: the numbers shown are its numbers
    return Recommendation(estimate=e, gpu_bytes=c.gpu_bytes, host_bytes=c.host_bytes,
                          tokens_per_s=c.tokens_per_s,
                          step_time_s=c.speed.step_s, dequant_share=c.speed.dequant_s / c.speed.micro_batch_s)


def recommend(req: Request, progress: Callable[[int, int], None] | None = None) -> Advice:
    """Search, rank and explain: the whole advice for one request."""
    start = time.perf_counter()
    probe = Probe(req)
    check_pins(probe)
    found = search(probe, progress)
    best = found[0] if found else None
    blockers: list[MethodNeeds] = []
    if best is not None and req.objective == "quality":
        blockers = [method_needs(probe, leanest_candidate(probe, m, seq_ladder(req)[0])) for m in probe.methods
                    if METHOD_TIER[m] > METHOD_TIER[best.plan.method]]
    gpu = req.gpu
    return Advice(
        model=req.model.name, gpu=gpu.slug, gpus=req.gpus, host_ram_bytes=req.host_ram_bytes,
        usable_bytes=gpu.usable_bytes, limit_bytes=probe.limit_bytes,
        objective=req.objective, headroom=req.headroom, effective_batch=req.effective_batch,
        plans=[_recommendation(probe, c) for c in found],
        limits=solve_limits(probe, best.plan) if best else None,
        knobs=knob_costs(probe, best) if best else [],
        contrast=contrast(probe, best) if best else None,
        blockers=blockers,
        nearest=None if best else nearest(probe),
        assumptions={"mfu": best.speed.mfu if best else None, "peak_tflops": best.speed.tflops if best else None,
                     "tokens_per_s_low": best.speed.tokens_per_s_low if best else None,
                     "tokens_per_s_high": best.speed.tokens_per_s_high if best else None,
                     "bandwidth_bytes_per_s": gpu.bandwidth_bytes_per_s,
                     "dequant_bandwidth_fraction": DEQUANT_BANDWIDTH_FRACTION,
                     "dtype_note": None if gpu.bf16_supported or "param_dtype" in req.pinned else
                     f"the {gpu.slug} has no bf16: LoRA/QLoRA run in fp16, full fine-tuning keeps fp32 master weights "
                     "with fp16 autocast"},
        evaluated=probe.evaluated, seconds=time.perf_counter() - start,
    )
