"""The one description of a training plan, in the words every report uses.

`plan_summary` is the one-line header of `estimate` and `calibrate` (method, adapters, dtypes, batch, recompute,
attention, optimizer); `method_words` and `run_words` are the sentence parts `suggest` explains a plan with;
engine names come from `vramplan.vocab.ENGINE_NAMES` (their one owner).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vramplan.vocab import engine_words

if TYPE_CHECKING:
    from vramplan.plan import TrainingPlan


def as_plan(plan: TrainingPlan | Mapping[str, Any]) -> TrainingPlan:
    """A typed plan from a plan's JSON (a stored calibration record's, a suggest alternative's)."""
    from vramplan.plan import TrainingPlan

    return plan if isinstance(plan, TrainingPlan) else TrainingPlan.from_dict(plan)


def method_short(plan: TrainingPlan) -> str:
    """'qlora r=16 targets=default nf4+dq': the method and its adapter settings."""
    words = plan.method
    if plan.method != "full":
        words += f" r={plan.rank} targets={plan.targets}"
    if plan.method == "qlora":
        words += f" {plan.quant}{'+dq' if plan.double_quant else ''}"
    if getattr(plan, "load_in_8bit", False):
        words += " int8 base"
    return words


def dtype_short(plan: TrainingPlan) -> str:
    """', fp32 weights + bf16 autocast' when the dtypes are not the default (bf16 without autocast), else ''."""
    if plan.param_dtype == "bf16" and not plan.mixed_precision:
        return ""
    autocast = f" + {plan.mixed_precision} autocast" if plan.mixed_precision else ""
    return f", {plan.param_dtype} weights{autocast}"


def step_short(plan: TrainingPlan) -> str:
    """'batch 1 x seq 1024, grad-ckpt, sdpa, paged_adamw_8bit'."""
    ckpt = "grad-ckpt" if plan.grad_ckpt else "no grad-ckpt"
    kernels = (", liger" if plan.liger else "") + (", activation offloading" if plan.activation_offloading else "")
    return f"batch {plan.batch} x seq {plan.seq}, {ckpt}, {plan.attn}, {plan.optimizer}{kernels}"


def plan_summary(plan: TrainingPlan, dtypes: bool = True) -> str:
    """The plan's one-line description: 'qlora r=16 targets=default nf4+dq, batch 1 x seq 1024, grad-ckpt, ...'."""
    return f"{method_short(plan)}{dtype_short(plan) if dtypes else ''}, {step_short(plan)}"


def method_words(plan: TrainingPlan) -> str:
    """'LoRA (r=64 on all-linear targets) on the bf16 base' style summary of a plan's method, for sentences."""
    if plan.method == "full":
        return "full fine-tuning"
    adapters = f"r={plan.rank} on {plan.targets} targets"
    if plan.method == "lora":
        base = "an int8 (LLM.int8)" if getattr(plan, "load_in_8bit", False) else f"the {plan.param_dtype}"
        return f"LoRA ({adapters}) on {base} base"
    dq = " + double quant" if plan.double_quant else ""
    return f"QLoRA ({(plan.quant or '').upper()}{dq}, {adapters})"


def dist_words(plan: TrainingPlan) -> str:
    """The plan's engine and offload: 'DDP replicas', 'DeepSpeed ZeRO-3 + optimizer offload to CPU'."""
    return engine_words(plan.sharding or "ddp", plan.offload)


def run_words(plan: TrainingPlan) -> str:
    """'seq 2048, micro-batch 4 x 4 accumulation, gradient checkpointing on, adamw' (and the GPUs, when several)."""
    from vramplan.plan import PARAM_SHARDING

    ckpt = "gradient checkpointing on" if plan.grad_ckpt else "no gradient checkpointing"
    words = f"seq {plan.seq}, micro-batch {plan.batch} x {plan.grad_accum} accumulation, {ckpt}, {plan.optimizer}"
    if plan.gpus > 1:
        words = f"{plan.gpus} GPUs with {dist_words(plan)}, {words} (per GPU)"
        if plan.method == "qlora" and plan.parallelism in PARAM_SHARDING:
            words += f"; the 4-bit weights stored as {plan.storage_dtype} (bnb_4bit_quant_storage) so that they shard"
    return words


def per_gpu_words(sharding: str, gpus: int, offload: str) -> str:
    """'' on one plain GPU; else ' per GPU (rank 0 of 2, FSDP2 full shard, offload params)'."""
    if sharding == "none":
        return ""
    extra = f", offload {offload}" if offload != "none" else ""
    return f" per GPU (rank 0 of {gpus}, {engine_words(sharding)}{extra})"
