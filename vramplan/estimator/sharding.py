"""Per-GPU memory of a data-parallel step: DDP, FSDP2 and DeepSpeed ZeRO, from the single-GPU estimate.

Every GPU runs the single-GPU step on its own micro-batch, so activations are those of one GPU; what changes is
where the weights, gradients and optimizer states live, and the communication buffers each engine adds. The
single-GPU step is re-priced moment by moment (`timeline.py`): each candidate peak keeps its activations and
gets the engine's weights, gradients and buffers at that point of the step. Sizes are rank 0's, the busiest
rank (dim-0 chunks round up). `sharding='none'` returns core's estimate untouched.

torch `DistributedDataParallel` (`ddp`), `torch/nn/parallel/distributed.py` + `csrc/distributed/c10d/reducer.cpp`:
- a full replica of weights, gradients and optimizer states on every GPU;
- gradient buckets: `Reducer::initialize_buckets` allocates one flat buffer per bucket (25 MiB cap) covering
  every trainable parameter, in the gradient dtype, at construction, and keeps them for the whole run; with the
  default `gradient_as_bucket_view=False` each `.grad` is a separate tensor copied into its bucket view for the
  all-reduce: one more gradient-sized buffer at every phase.

torch FSDP2 `fully_shard` (`fsdp`; `torch/distributed/fsdp/_fully_shard/`), one unit per decoder layer + root:
- sharded at rest: parameters (`_sharded_param_data`), gradients (views of each unit's reduce-scatter output)
  and optimizer states (made by the optimizer on the sharded DTensor parameters) are 1/N, padded on dim 0;
- forward, per unit (`FSDPParamGroup.unshard / wait_for_unshard`): the flat all-gather output (`foreach_all_gather`)
  and the unsharded parameters copied out of it (`foreach_all_gather_copy_out`, `alloc_storage`); the flat buffer
  is kept as `comm_ctx.all_gather_state` until the next unit's copy-out ([Note: Overlapping all-gather copy-in
  and all-gather]) and the last one until the root's post-forward, i.e. through the loss: two unit-sized buffers
  while a layer runs, one while the head runs;
- the root (`fully_shard(model)`) is not resharded after forward (`reshard_after_forward=None` -> False for the
  root): embeddings, final norm and lm_head stay unsharded from the first forward op to the end of backward, and
  their gradients stay unsharded until the final callback reduce-scatters them (`_root_post_backward_final_callback`);
- backward: `pre_backward` unshards the unit and prefetches the previous one (`_backward_prefetch`: one flat
  all-gather output); `post_backward` reshards, then copies the unit's gradients into a padded flat
  reduce-scatter input (`foreach_reduce`) that is kept in `comm_ctx.reduce_scatter_states` until the next unit's
  post-backward (`reduce_scatter_max_input_buffers=1`): during layer k's backward, layer k+1's buffer is alive;
- world size 1: no all-gather buffer; the unsharded copy and the reduce copy still happen.
`fsdp_grad_op` is the same with `reshard_after_forward=False` on every unit (FSDP1's SHARD_GRAD_OP): unsharded
layers pile up through forward and are freed one by one in backward; nothing is all-gathered in backward.
`offload='params'` (`CPUOffloadPolicy`): sharded parameters, sharded gradients (`new_sharded_grad.to("cpu")`) and
the optimizer step live in host RAM; the GPU keeps the unsharded units, the buffers and the activations.

Gradient accumulation: DDP (accelerate's `no_sync`) keeps full `.grad`s through the micro-batches, as on one GPU;
FSDP2 (`set_requires_gradient_sync(True)`, its default) reduce-scatters each micro-batch's fresh gradients into
the sharded ones. `--mixed-precision` is torch.autocast over fp32 parameters, as on one GPU (FSDP2's
`MixedPrecisionPolicy`, which all-gathers bf16 copies, is not modelled).

DeepSpeed ZeRO (`zero1|zero2|zero3`): see `deepspeed.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vramplan.estimator.core import estimate_memory as single_gpu_estimate
from vramplan.estimator.optimizer import OptimizerMemory, optimizer_memory
from vramplan.estimator.partition import Units, build_units
from vramplan.estimator.result import MemoryEstimate
from vramplan.estimator.timeline import Moment, step_moments
from vramplan.estimator.weights import StaticMemory, static_memory
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan

# Engines that reduce every micro-batch's gradients into the sharded ones (FSDP2's default
# `set_requires_gradient_sync(True)`; DeepSpeed ZeRO-2/3 reduce in backward at every micro-batch), so gradient
# accumulation holds sharded gradients. DDP (accelerate's `no_sync`) and ZeRO-1 accumulate full gradients.
REDUCE_EVERY_MICRO_BATCH = ("fsdp", "fsdp_grad_op", "zero2", "zero3")
WEIGHT_KEYS = ("quantized_weights", "quant_constants", "double_quant_constants", "base_weights", "lora_adapters")


@dataclass(frozen=True)
class Static:
    """What a rank holds between steps, split like the single-GPU components (bytes)."""

    weights: dict[str, int]  # per-GPU share of each weight component
    optimizer_states: int
    master_weights: int = 0  # DeepSpeed: fp32 copy of the trainable partition
    buffers: int = 0  # persistent communication buffers (DDP buckets)
    host: int = 0  # offloaded to host RAM (per GPU)
    states_at_init: bool = False  # DeepSpeed builds master weights and optimizer states at initialize()

    @property
    def load(self) -> int:
        """Live bytes before step 1 (torch optimizers create their states lazily, in the first step)."""
        eager = self.optimizer_states + self.master_weights if self.states_at_init else 0
        return sum(self.weights.values()) + self.buffers + eager

    def parts(self) -> dict[str, int]:
        """The components every moment of the step holds."""
        return {**self.weights, "optimizer_states": self.optimizer_states, "master_weights": self.master_weights,
                "comm_buffers": self.buffers}


@dataclass(frozen=True)
class Priced:
    """One moment re-priced for an engine: components that sum to the rank's live bytes."""

    phase: str
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def estimate_sharded(model: ModelSpec, plan: TrainingPlan) -> MemoryEstimate:
    """The per-GPU estimate of `plan` (core's estimate when the plan is one plain GPU)."""
    single = single_gpu_estimate(model, plan)
    if not plan.multi_gpu:
        return single
    from vramplan.estimator import deepspeed

    engine = deepspeed.price if plan.parallelism.startswith("zero") else price_torch
    if plan.grad_accum > 1 and plan.parallelism in REDUCE_EVERY_MICRO_BATCH:
        # Each micro-batch's backward makes fresh gradients and reduces them into the sharded ones, which hold
        # the sum: the step is priced from a one-micro-batch step, with the held shards added by the engine.
        one = plan.model_copy(update={"grad_accum": 1})
        moments = step_moments(model, one)
        est = compose(model, plan, single_gpu_estimate(model, one), moments, *engine(model, plan, moments))
        batches = single.phases["optimizer"] - single_gpu_estimate(model, one).phases["optimizer"]
        phases = {k: v + (batches if k != "load" else 0) for k, v in est.phases.items()}  # the other batches
        return est.model_copy(update={"phases": phases, "traced_phases": None})
    moments = step_moments(model, plan)
    return compose(model, plan, single, moments, *engine(model, plan, moments))


# torch engines ---------------------------------------------------------------------------------------------


TORCH_ENGINES = ("ddp", "ddp_zero_redundancy", "fsdp", "fsdp_grad_op")


def price_torch(model: ModelSpec, plan: TrainingPlan, moments: list[Moment], engine: str | None = None,
                rank: int = 0) -> tuple[Static, list[Priced], Priced]:
    """(static, priced forward/backward moments, priced optimizer step) for a torch engine (default: the plan's).

    `ddp_zero_redundancy` is DDP with torch's `ZeroRedundancyOptimizer`, the torch counterpart of ZeRO-1 (used to
    check `zero1` on CPU): whole parameters go to ranks, largest first, each to the rank with the fewest elements
    so far (`_partition_parameters`), so ranks differ; `rank` picks one (the others are priced for rank 0)."""
    st = static_memory(model, plan)
    units = build_units(model, plan)
    mode = engine or plan.parallelism
    if mode.startswith("ddp"):
        numels = st.trainable_numels
        if mode == "ddp_zero_redundancy":
            numels = zero_redundancy_share(numels, plan.gpus, rank)
        shapes = st.trainable_shapes if mode == "ddp" else None  # ZeroRedundancyOptimizer's share: unfactored
        opt = optimizer_memory(plan, numels, st.trainable_dtype_bytes, shapes)
        buckets = units.total("grads")
        static = Static(_weights(st), opt.states_bytes, buffers=buckets)
        grads = units.total("grads")
        return static, [_replicated_moment(m, static) for m in moments], _step(static, grads, opt)
    shards = tuple(n for u in units.all for n in u.trainable_shards)
    opt = optimizer_memory(plan, shards, st.trainable_dtype_bytes)
    offload = plan.offload == "params"
    static = sharded_static(st, units, opt, offload)
    held = units.total("reduce") // plan.gpus if plan.grad_accum > 1 and not offload else 0
    priced = [_fsdp_moment(m, static, units, mode == "fsdp_grad_op", offload, held) for m in moments]
    priced += _fsdp_final_reduce(static, units, offload, model.num_layers)
    sharded_grads = units.total("reduce") // plan.gpus
    if offload:  # the step runs on the host, on host gradients
        static = replace(static, host=static.host + sharded_grads + opt.step_temp_bytes)
        return static, priced, _step(static, 0, opt, on_host=True)
    return static, priced, _step(static, sharded_grads, opt)


def zero_redundancy_share(numels: tuple[int, ...], gpus: int, rank: int = 0) -> tuple[int, ...]:
    """The parameters torch's ZeroRedundancyOptimizer gives `rank` (greedy, largest first, stable ties)."""
    sizes = [0] * gpus
    share: list[list[int]] = [[] for _ in range(gpus)]
    for n in sorted(numels, reverse=True):
        r = sizes.index(min(sizes))
        share[r].append(n)
        sizes[r] += n
    return tuple(share[rank])


def _weights(st: StaticMemory) -> dict[str, int]:
    return {k: getattr(st, k) for k in WEIGHT_KEYS}


def sharded_static(st: StaticMemory, units: Units, opt: OptimizerMemory, offload: bool) -> Static:
    """Each sharded weight component shrinks to rank 0's shard; quant states and buffers stay whole. With
    `offload`, the shards and the optimizer states live in host RAM."""
    weights = _weights(st)
    host = opt.states_bytes
    for kind in ("quantized_weights", "base_weights", "lora_adapters"):
        shard = units.shard_of(kind)
        weights[kind] += (0 if offload else shard) - units.full_of(kind)  # what is left is not a parameter
        host += shard
    if not offload:
        return Static(weights, opt.states_bytes)
    return Static(weights, 0, host=host)


def _replicated_moment(m: Moment, static: Static) -> Priced:
    return Priced(m.phase, {**static.parts(), "gradients": m.head_grads + m.layers_done * m.layer_grads,
                            "activations": m.activations})


def _fsdp_moment(m: Moment, static: Static, units: Units, grad_op: bool, offload: bool, held: int = 0) -> Priced:
    """One moment of the step under FSDP2 (see the module docstring for each buffer's lifetime). `held`: the
    sharded gradients of earlier micro-batches; this micro-batch's reduced shards are added into them in place."""
    n_layers, layer, root = len(units.layers), units.largest_layer, units.root
    gpus = root.gpus
    ag = layer.padded if gpus > 1 else 0  # one flat all-gather output
    gathered = root.padded  # the root stays unsharded through forward and backward
    buffers = 0
    if m.where == "layer" and m.phase == "forward":
        gathered += (m.layer + 1 if grad_op else 1) * layer.padded
        buffers += ag
    elif m.where == "head":
        gathered += n_layers * layer.padded if grad_op else 0
        buffers += 0 if grad_op and m.phase == "backward" else ag
    elif m.where == "layer":  # backward
        gathered += (m.layer + 1 if grad_op else 1) * layer.padded
        if m.layer > 0 and not grad_op:
            buffers += ag  # the previous layer, prefetched
        if m.layer < n_layers - 1:
            buffers += layer.reduce  # the layer above's reduce-scatter input, kept until this post-backward
    elif m.where == "embedding":
        buffers += layer.reduce  # layer 0's reduce-scatter input
    grads = m.head_grads + (0 if offload or held else m.layers_done * layer.reduce // gpus) + held
    return Priced(m.phase, {**static.parts(), "unsharded_params": gathered, "comm_buffers": static.buffers + buffers,
                            "gradients": grads, "activations": m.activations})


def _fsdp_final_reduce(static: Static, units: Units, offload: bool, n_layers: int) -> list[Priced]:
    """The root's post-backward in the final callback: unsharded root gradients copied into its reduce input."""
    root = units.root
    sharded = 0 if offload else n_layers * units.largest_layer.reduce // root.gpus
    return [Priced("backward", {**static.parts(), "comm_buffers": static.buffers + root.reduce,
                                "gradients": root.grads + sharded})]


def _step(static: Static, grads: int, opt: OptimizerMemory, on_host: bool = False) -> Priced:
    """optimizer.step(): states, gradients and the step's temporaries (on the host when offloaded)."""
    return Priced("optimizer", {**static.parts(), "gradients": grads,
                                "optimizer_temporaries": 0 if on_host else opt.step_temp_bytes})


# Composition -------------------------------------------------------------------------------------------------


def compose(model: ModelSpec, plan: TrainingPlan, single: MemoryEstimate, moments: list[Moment], static: Static,
            priced: list[Priced], step: Priced) -> MemoryEstimate:
    """Phase peaks from the priced moments, with core's own phase peaks as the reference.

    For forward and backward, the re-priced largest moment is shifted by core's phase peak minus the largest
    single-GPU moment that `timeline.py` recomputes (zero while the two agree; a term core adds to every moment
    of a phase then carries over). The optimizer step is shifted the same way against core's."""
    drift = _drift(model, plan, single, moments)
    phases = {"load": static.load}
    best: dict[str, Priced] = {}
    for p in priced:
        if p.phase not in best or p.total > best[p.phase].total:
            best[p.phase] = p
    best["optimizer"] = step
    for phase, p in best.items():
        phases[phase] = p.total + drift.get(phase, 0)
    peak_phase = max(phases, key=lambda k: phases[k])
    parts = dict(best[peak_phase].parts) if peak_phase in best else {**static.weights, "comm_buffers": static.buffers}
    parts["activations"] = parts.get("activations", 0) + phases[peak_phase] - sum(parts.values())
    parts = {k: v for k, v in parts.items() if v or k in WEIGHT_KEYS}
    components = {k: parts.get(k, 0) for k in (*WEIGHT_KEYS, "optimizer_states", "gradients",
                                                "optimizer_temporaries")}
    components.update({k: v for k, v in parts.items() if k not in components})
    traced = None
    if single.traced_phases:
        traced = {k: v + single.traced_phases.get(k, single.phases[k]) - single.phases[k] for k, v in phases.items()}
    return single.model_copy(update={
        "components": components, "phases": phases, "peak_phase": peak_phase, "traced_phases": traced,
        "gpus": plan.gpus, "sharding": plan.parallelism, "host_offload_bytes": static.host,
        "plan": plan.model_dump(),
    })


def _drift(model: ModelSpec, plan: TrainingPlan, single: MemoryEstimate, moments: list[Moment]) -> dict[str, int]:
    """core's phase peaks minus what timeline.py recomputes for them (0 while they agree)."""
    st = static_memory(model, plan)
    # the same states core priced (Adafactor factors >= 2-D tensors: the shapes matter, as in core.py)
    opt = optimizer_memory(plan, st.trainable_numels, st.trainable_dtype_bytes, st.trainable_shapes)
    base = st.total + opt.states_bytes
    out = {}
    for phase in ("forward", "backward"):
        live = max(m.live for m in moments if m.phase == phase)
        out[phase] = single.phases[phase] - base - live
    grads = sum(st.trainable_numels) * st.trainable_dtype_bytes
    out["optimizer"] = single.phases["optimizer"] - base - grads - opt.step_temp_bytes
    return out
