"""DeepSpeed ZeRO stages 1-3, per GPU: the ZeRO paper's stage rules plus the buffers DeepSpeed 0.19 allocates.

Stage rules (Rajbhandari et al., "ZeRO", 2020, with K = 12 bytes of optimizer state per parameter for mixed
precision Adam): with 16-bit weights DeepSpeed keeps an fp32 master copy of the trainable parameters and runs
the client optimizer on it, so the optimizer states are fp32 too (`stage_1_and_2.py`:
`single_partition_of_fp32_groups`; `stage3.py`: `fp32_partitioned_groups_flat`). Each rank owns 1/N of them:
- stage 1 (`zero1`): fp32 master + optimizer states partitioned; 16-bit weights and gradients whole;
- stage 2 (`zero2`): + gradients partitioned: each one is reduced as soon as it is ready (IPG buckets of
  `reduce_bucket_size` elements) into this rank's flat partition, and the full gradient is freed;
- stage 3 (`zero3`): + 16-bit weights partitioned (frozen ones included); a module's parameters are gathered
  before it runs and stay gathered while fewer than `stage3_max_live_parameters` (1e9) elements are live and
  they will be reused within `stage3_max_reuse_distance` (1e9), which holds every gathered parameter of a model
  under 1e9 parameters from its first use to its backward; parameters under `stage3_param_persistence_threshold`
  elements are never partitioned. The gradient partition is one flat buffer kept across steps, and so is one
  reduce bucket.
At the step (`DeepSpeedZeroOptimizer.step`): the rank's gradient partition is flattened (16-bit) and cast to an
fp32 copy that becomes the master's `.grad`; then the client optimizer steps on the partition (AdamW foreach:
one more fp32 partition-sized temporary). `offload='optimizer'` (ZeRO-Offload) moves master, states, fp32
gradients and the step to the host; `offload='params'` (stage 3) moves the 16-bit partition there too.

Bucket sizes are those HF Trainer's DeepSpeed integration fills for "auto": `reduce_bucket_size` = hidden²,
`stage3_prefetch_bucket_size` = 0.9 hidden², `stage3_param_persistence_threshold` = 10 hidden.

How it is checked: DeepSpeed is not a dependency and does not run in CI. Its torch counterparts do (the ZeRO
paper's sharding of states, gradients and parameters is what ZeroRedundancyOptimizer and FSDP2 implement), and
tests/test_sharding.py pins the stage arithmetic. A one-off run of DeepSpeed 0.19.8 itself on CPU (gloo,
`DS_ACCELERATOR=cpu`, tracked by `MemoryTracker`) is recorded in the README with the per-rank errors.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.estimator.engines.pricing import Priced, Repriced, Static, weight_components
from vramplan.estimator.optimizer import optimizer_memory
from vramplan.estimator.partition import Units, build_units
from vramplan.estimator.step import Moment
from vramplan.estimator.trainers import adapter_bytes
from vramplan.estimator.weights import static_memory
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES

MAX_LIVE_PARAMETERS = 10**9  # stage3_max_live_parameters (DeepSpeed default, also in HF's example configs)
MASTER_BYTES = 4


def reprice_zero(model: ModelSpec, plan: TrainingPlan, moments: tuple[Moment, ...], reference_bytes: int = 0
                 ) -> Repriced:
    """The step's moments re-priced for a ZeRO stage, with DPO's frozen reference copy (`reference_bytes`, whole)
    as TRL's `prepare_deepspeed` holds it: stages 1-2 run it at stage 0 (a replica); stage 3 partitions it like
    the policy and gathers its parameters while its forward runs (the same persistence threshold and cap)."""
    priced = _reprice_zero(model, plan, moments)
    if not reference_bytes:
        return priced
    in_forward = reference_bytes
    if plan.parallelism == "zero3":
        units = build_units(model, plan)
        small, large = units.memo(("zero3 persistence", 10 * model.hidden_size, (1, 1)),
                                  lambda: _persistent_and_partitioned(units, 10 * model.hidden_size, (1, 1)))
        gathered = min(large, MAX_LIVE_PARAMETERS * DTYPE_BYTES[plan.param_dtype])
        in_forward = max(reference_bytes, -(-large // plan.gpus) + small + gathered)
    return replace(priced, reference_after_load=reference_bytes, reference_in_forward=in_forward)


def _reprice_zero(model: ModelSpec, plan: TrainingPlan, moments: tuple[Moment, ...]) -> Repriced:
    stage = int(plan.parallelism[-1])
    st = static_memory(model, plan)
    units = build_units(model, plan)
    n = plan.gpus
    h = model.hidden_size
    # With bf16/fp16 on, the engine casts the whole module to 16 bits (`DeepSpeedEngine._configure_distributed_model`:
    # `module.bfloat16()`), LoRA's adapters included (fp32, or already bf16 under TRL: `adapter_bytes`); gradients
    # come in that dtype.
    g = min(st.trainable_dtype_bytes, DTYPE_BYTES[plan.param_dtype])
    adapter_scale = (g, adapter_bytes(plan)) if plan.uses_lora else (1, 1)
    numel = sum(st.trainable_numels)
    part = -(-numel // n)  # this rank's partition of the trainable elements
    master = part * MASTER_BYTES if g < MASTER_BYTES else 0
    opt = optimizer_memory(plan, (part,), MASTER_BYTES)
    bucket = min(h * h, numel) * g
    host_opt = plan.offload in ("optimizer", "params")
    weights = weight_components(st)
    weights["lora_adapters"] = weights["lora_adapters"] * adapter_scale[0] // adapter_scale[1]
    gathered = 0
    persistent = 0
    if stage == 3:
        small, large = units.memo(("zero3 persistence", 10 * h, adapter_scale),
                                  lambda: _persistent_and_partitioned(units, 10 * h, adapter_scale))
        for kind in ("quantized_weights", "base_weights", "lora_adapters"):
            weights[kind] = 0
        if plan.offload != "params":
            weights["base_weights"] = -(-large // n)
        weights["base_weights"] += small + st.total - units.total("full")  # + what is not a parameter (buffers)
        weights["quant_constants"], weights["double_quant_constants"] = st.quant_constants, st.double_quant_constants
        gathered = min(large, MAX_LIVE_PARAMETERS * DTYPE_BYTES[plan.param_dtype])
        persistent = part * g + bucket  # the flat gradient partition and one reduce bucket
    host = (master + opt.states_bytes + part * MASTER_BYTES) if host_opt else 0
    if plan.offload == "params":
        host += sum(units.shard_of(k) for k in ("quantized_weights", "base_weights", "lora_adapters"))
    static = Static(weights, 0 if host_opt else opt.states_bytes, 0 if host_opt else master, persistent, host,
                    states_at_init=False)
    held = part * g if stage == 2 and plan.grad_accum > 1 else 0  # the partition holds earlier micro-batches
    step = [m for m in moments if m.phase == "optimizer"][0]
    priced = [_moment(m, static, stage, part * g, bucket, gathered, held) for m in moments if m is not step]
    if stage == 1:  # after autograd: every full gradient, the partition being averaged into, the bucket; what
        # outlives backward (the batch, a loop's outputs: the optimizer moment's activations) is still there
        priced.append(Priced("backward", {**static.parts(), "gradients": numel * g + part * g,
                                          "comm_buffers": bucket, "activations": step.activations}))
    return Repriced(static, priced, _step(static, step, stage, part, g, opt.step_temp_bytes, host_opt))


def _persistent_and_partitioned(units: Units, threshold: int, adapter_scale: tuple[int, int]) -> tuple[int, int]:
    """Bytes, as the engine holds them (adapters in 16 bits), of the parameters under
    `stage3_param_persistence_threshold` elements (never partitioned) and of the others."""
    small = large = 0
    for u in units.all:
        for p in u.params:
            size = p.numel * p.itemsize
            if p.kind == "lora_adapters":
                size = size * adapter_scale[0] // adapter_scale[1]
            if p.numel < threshold:
                small += size
            else:
                large += size
    return small, large


def _moment(m: Moment, static: Static, stage: int, grad_partition: int, bucket: int, gathered: int,
            held: int = 0) -> Priced:
    # stage 1 holds full gradients (earlier micro-batches' counted with the activations, as on one GPU); stages
    # 2-3 reduce every micro-batch, so their moments come from a one-micro-batch step (no `m.held_grads`)
    parts = {**static.parts(), "activations": m.activations + m.held_grads, "gradients": held}
    finished = m.gradients - m.held_grads
    if stage == 1:
        parts["gradients"] = finished
        if m.phase == "backward":
            parts["comm_buffers"] = static.buffers + bucket  # the IPG buffer, set up when backward starts
    elif stage == 2 and m.phase == "backward":
        parts["gradients"] = grad_partition if finished or held else 0
        parts["comm_buffers"] = static.buffers + bucket
    if stage == 3:
        parts["unsharded_params"] = gathered
        if m.phase == "backward":
            parts["comm_buffers"] = static.buffers  # the gradient partition and the bucket are static there
    return Priced(m.phase, parts, m.where)


def _step(static: Static, step: Moment, stage: int, part: int, g: int, temp: int, on_host: bool) -> Priced:
    """`DeepSpeedZeroOptimizer.step` (stages 1-2): the averaged 16-bit partition, its flat copy and the fp32
    copy of that, then the fp32 gradient beside the optimizer's temporary; stage 3 casts its persistent flat
    partition. Offloaded, the GPU only holds the 16-bit partition while it is copied out. Beside them: what the
    single-GPU step holds there besides gradients and temporaries (the batch, a loop's outputs)."""
    rest = {"activations": step.activations}
    if on_host:
        return Priced("optimizer", {**static.parts(), "gradients": part * g if stage < 3 else 0, **rest})
    fp32 = part * MASTER_BYTES if g < MASTER_BYTES else 0
    if stage == 3:
        return Priced("optimizer", {**static.parts(), "gradients": fp32, "optimizer_temporaries": temp, **rest})
    flatten = 2 * part * g + fp32
    stepping = max(fp32, part * g)
    if flatten >= stepping + temp:
        return Priced("optimizer", {**static.parts(), "gradients": flatten, **rest})
    return Priced("optimizer", {**static.parts(), "gradients": stepping, "optimizer_temporaries": temp, **rest})
