"""The single-GPU estimate: the weights (`weights.py`), the optimizer states (`optimizer.py`) and the moments of
one step (`step.py`), composed into phase peaks and the components of the largest one.

`estimate_step` also returns the moments, which the sharding engines (`engines/`) re-price.
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

from vramplan.architecture import traits_of
from vramplan.estimator.context import attention_dropout, kernel_dequantizes, layer_context
from vramplan.estimator.optimizer import MIN_8BIT_SIZE, QMAP_BYTES, OptimizerMemory, optimizer_memory
from vramplan.estimator.programs import Ctx
from vramplan.estimator.result import MemoryEstimate
from vramplan.estimator.step import Moment, cpu_context, phase_peaks, step_moments
from vramplan.estimator.step_tensors import batch_bytes
from vramplan.estimator.trainers import reference_copy, step_plan
from vramplan.estimator.weights import StaticMemory, static_memory, transformers_model, unquantized_experts_note
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan


class StepEstimate:
    """The single-GPU estimate and the moments of the step it was read from (a plain class: a dataclass's
    generated methods would cost ~0.6 ms of every cold start)."""

    def __init__(self, fields: dict, moments: tuple[Moment, ...], reference_bytes: int) -> None:
        self.fields = fields  # the MemoryEstimate's arguments (the engines build theirs from them: one validation)
        self.moments = moments
        self.reference_bytes = reference_bytes  # DPO without PEFT: the frozen reference model (outside the model)

    @cached_property
    def estimate(self) -> MemoryEstimate:
        return MemoryEstimate(**self.fields)


def estimate_single_gpu(model: ModelSpec, plan: TrainingPlan) -> MemoryEstimate:
    """Peak live tensor bytes of a steady-state training step on one GPU, per phase and per component.

    The phases are what `torch.cuda.max_memory_allocated()` sees on a CUDA device. Where the CPU tracer sees
    less (temporaries inside bitsandbytes' CUDA kernels), `traced_phases` gives its figures.
    """
    return estimate_step(model, plan).estimate


def estimate_step(model: ModelSpec, plan: TrainingPlan) -> StepEstimate:
    """`estimate_single_gpu` with the moments its phases are the maxima of."""
    model = transformers_model(model, plan)  # --transformers 4: MoE experts are nn.Linears (experts_v4.py)
    st = static_memory(model, plan)
    trainable = _trainable(st, plan)
    opt, grads_bytes = trainable.opt, trainable.grads_bytes
    ref = st.total if reference_copy(plan) else 0  # DPO without PEFT: a frozen copy of the model (trainers.py)
    base = st.total + opt.states_bytes + ref
    step_p = step_plan(plan)  # DPO: chosen and rejected rows
    context = layer_context(model, step_p)
    moments = step_moments(model, step_p, grads_bytes, opt.step_temp_bytes, context=context)
    phases = {"load": st.total + ref, **phase_peaks(moments, base)}
    if plan.eval_batch:  # the eval step: a phase of its own (evaluation.py)
        from vramplan.estimator.evaluation import eval_peak

        phases["eval"] = eval_peak(model, plan, base)
    traced = _traced_phases(model, step_p, phases, base, trainable, context)
    peak_phase = max(phases, key=lambda p: phases[p])
    peak = phases[peak_phase]
    stepping = peak_phase == "optimizer"
    components = {
        "quantized_weights": st.quantized_weights,
        "quant_constants": st.quant_constants,
        "double_quant_constants": st.double_quant_constants,
        "base_weights": st.base_weights,
        **({"reference_model": ref} if ref else {}),
        "lora_adapters": st.lora_adapters,
        "optimizer_states": opt.states_bytes if peak_phase != "load" else 0,
        "gradients": grads_bytes if stepping else 0,
        "optimizer_temporaries": opt.step_temp_bytes if stepping else 0,
        "batch": batch_bytes(plan) if peak_phase != "load" else 0,
    }
    components["activations"] = peak - sum(components.values())
    offload_note, host_bytes = _offloading(model, plan)
    fields = dict(
        model=model.name,
        plan=plan,  # the checked plan itself (a record field takes an instance as it is)
        components=components,
        phases=phases,
        peak_phase=peak_phase,
        paged_bytes=opt.paged_bytes,
        traced_phases=traced,
        notes=tuple(n for n in (unquantized_experts_note(model, plan), offload_note) if n),
        host_offload_bytes=host_bytes,
    )
    return StepEstimate(fields, moments, ref)


def _offloading(model: ModelSpec, plan: TrainingPlan) -> tuple[str | None, int]:
    """`--activation-offloading`'s note and pinned host bytes (offloading.py, loaded for such plans only)."""
    if not plan.activation_offloading:
        return None, 0
    from vramplan.estimator.offloading import host_offload_bytes, offloading_note

    return offloading_note(model, plan), host_offload_bytes(model, plan)


def _traced_phases(model: ModelSpec, plan: TrainingPlan, phases: dict[str, int], base: int,
                   trainable: _Trainable, context: Ctx) -> dict[str, int] | None:
    """What the CPU tracer counts, where it differs from CUDA's allocator: no dequantize temporary inside
    gemm_4bit, float dropout masks, paged optimizer states as ordinary tensors, and bitsandbytes' two 1 KiB
    quantization maps from the optimizer's construction on (on CUDA they reach the device at step 1)."""
    opt = trainable.opt
    qmaps = 2 * QMAP_BYTES if plan.optimizer in ("adamw_8bit", "paged_adamw_8bit", "lion_8bit") else 0
    # the CPU takes other paths: float dropout masks (LoRA's, or the architecture's residual dropout) and
    # bitsandbytes' MatMul8bitFp for an 8-bit base (programs.int8_linear)
    kernel = kernel_dequantizes(plan) or (plan.uses_lora and plan.lora_dropout > 0) or plan.load_in_8bit or (
        traits_of(model).resid_dropout > 0) or attention_dropout(model) > 0
    if not (kernel or qmaps or opt.paged_bytes):
        return None
    step = phases
    if kernel:
        step = phase_peaks(step_moments(model, plan, trainable.grads_bytes, opt.step_temp_bytes, cuda=False,
                                        context=cpu_context(context)), base)
    # on CPU both maps exist from `fill_qmap` in __init__; the states already count the ones CUDA moves
    moved = QMAP_BYTES * (1 if plan.optimizer == "lion_8bit" else 2) if qmaps and trainable.eight_bit else 0
    traced = {p: step[p] + opt.paged_bytes + qmaps - moved for p in ("forward", "backward", "optimizer")}
    return {"load": phases["load"] + qmaps, **traced}


class _Trainable(NamedTuple):
    """What one GPU's optimizer and gradients take for a StaticMemory (cached with it)."""

    st: StaticMemory
    opt: OptimizerMemory
    eight_bit: bool  # any tensor large enough for 8-bit states
    grads_bytes: int  # every trainable tensor's gradient


_OPT_CACHE: dict[tuple[int, str], _Trainable] = {}


def _trainable(st: StaticMemory, plan: TrainingPlan) -> _Trainable:
    """optimizer_memory walks every trainable tensor; StaticMemory objects are cached, so this is too."""
    key = (id(st), plan.optimizer)
    hit = _OPT_CACHE.get(key)
    if hit is None or hit.st is not st:
        if len(_OPT_CACHE) > 4096:
            _OPT_CACHE.clear()
        opt = optimizer_memory(plan, st.trainable_numels, st.dtypes, st.trainable_shapes)
        hit = _OPT_CACHE[key] = _Trainable(st, opt, any(n >= MIN_8BIT_SIZE for n in st.trainable_numels),
                                           st.trainable_bytes)
    return hit


def optimizer_for(st: StaticMemory, plan: TrainingPlan) -> OptimizerMemory:
    """The optimizer states and step temporaries of the plan's trainable tensors on one GPU."""
    return _trainable(st, plan).opt
