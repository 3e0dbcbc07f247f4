"""Re-pricing the single-GPU step for torch's engines: DDP, DDP with ZeroRedundancyOptimizer, FSDP2.

Every GPU runs the single-GPU step on its own micro-batch (`step.step_moments`); each moment keeps its
activations and gets the engine's weights, gradients and buffers at that point of the step. Sizes are rank 0's,
the busiest rank (dim-0 chunks round up).

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
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.estimator.engines.pricing import Priced, Repriced, Static, weight_components
from vramplan.estimator.optimizer import OptimizerMemory, optimizer_memory
from vramplan.estimator.partition import Units, build_units
from vramplan.estimator.single_gpu import optimizer_for
from vramplan.estimator.step import Moment
from vramplan.estimator.weights import StaticMemory, static_memory
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan

TORCH_ENGINES = ("ddp", "ddp_zero_redundancy", "fsdp", "fsdp_grad_op")


def reprice_torch(model: ModelSpec, plan: TrainingPlan, moments: tuple[Moment, ...], engine: str | None = None,
                  rank: int = 0, reference_bytes: int = 0) -> Repriced:
    """The step's moments re-priced for a torch engine, with DPO's frozen reference copy (`reference_bytes`, whole)
    as the engine holds it (`reference_copy`)."""
    priced = _reprice_torch(model, plan, moments, engine, rank)
    if not reference_bytes:
        return priced
    after_load, in_forward = reference_copy(model, plan, engine or plan.parallelism, reference_bytes)
    return replace(priced, reference_after_load=after_load, reference_in_forward=in_forward)


def reference_copy(model: ModelSpec, plan: TrainingPlan, mode: str, whole: int) -> tuple[int, int]:
    """(after load, during the reference forward) bytes of DPO's frozen reference model per GPU, never below the
    whole copy. DDP: accelerate's `prepare_model(evaluation_mode=True)`, a plain replica. FSDP: TRL's
    `prepare_fsdp` calls `fully_shard(ref_model)` once: one unit, its shard at rest, and its forward all-gathers
    the whole model (the flat all-gather output, kept until the unit's post-forward, beside the unsharded
    parameters); with `reshard_after_forward=False` (fsdp_grad_op) nothing reshards it after (an eval model has
    no backward), so from the first step the unsharded copy stays beside the shard."""
    if not mode.startswith("fsdp"):
        return whole, whole
    st, units = static_memory(model, plan), build_units(model, plan)
    shard = units.total("shard") + st.total - units.total("full")  # + what is not a parameter (buffers)
    padded = units.total("padded")
    if mode == "fsdp_grad_op":
        return max(whole, shard + padded), max(whole, shard + padded)
    return whole, max(whole, shard + 2 * padded)


def _reprice_torch(model: ModelSpec, plan: TrainingPlan, moments: tuple[Moment, ...], engine: str | None,
                   rank: int) -> Repriced:
    """The step's moments re-priced for a torch engine (default: the plan's).

    `ddp_zero_redundancy` is DDP with torch's `ZeroRedundancyOptimizer`, the torch counterpart of ZeRO-1 (used to
    check `zero1` on CPU): whole parameters go to ranks, largest first, each to the rank with the fewest elements
    so far (`_partition_parameters`), so ranks differ; `rank` picks one (the others are priced for rank 0)."""
    st = static_memory(model, plan)
    units = build_units(model, plan)
    mode = engine or plan.parallelism
    step = [m for m in moments if m.phase == "optimizer"][0]
    moving = [m for m in moments if m.phase != "optimizer"]
    if mode.startswith("ddp"):
        if mode == "ddp":  # a full replica: the single-GPU optimizer
            opt = optimizer_for(st, plan)
        else:  # ZeroRedundancyOptimizer's share (unfactored)
            numels = zero_redundancy_share(st.trainable_numels, plan.gpus, rank)
            opt = optimizer_memory(plan, numels, st.trainable_dtype_bytes)
        buckets = units.total("grads")
        static = Static(weight_components(st), opt.states_bytes, buffers=buckets)
        return Repriced(static, [_replicated_moment(m, static) for m in moving],
                        _step(static, step, units.total("grads"), opt))
    opt = units.sharded_optimizer(plan, st.trainable_dtype_bytes)
    offload = plan.offload == "params"
    static = sharded_static(st, units, opt, offload)
    held = units.total("reduce") // plan.gpus if plan.grad_accum > 1 and not offload else 0
    grad_op, parts = mode == "fsdp_grad_op", static.parts()
    priced = [_fsdp_moment(m, static, units, grad_op, offload, held, parts) for m in moving]
    priced.append(_fsdp_final_reduce(static, units, offload, model.num_layers, step))
    sharded_grads = units.total("reduce") // plan.gpus
    if offload:  # the step runs on the host, on host gradients
        static = replace(static, host=static.host + sharded_grads + opt.step_temp_bytes)
        return Repriced(static, priced, _step(static, step, 0, opt, on_host=True))
    return Repriced(static, priced, _step(static, step, sharded_grads, opt))


def zero_redundancy_share(numels: tuple[int, ...], gpus: int, rank: int = 0) -> tuple[int, ...]:
    """The parameters torch's ZeroRedundancyOptimizer gives `rank` (greedy, largest first, stable ties)."""
    sizes = [0] * gpus
    share: list[list[int]] = [[] for _ in range(gpus)]
    for n in sorted(numels, reverse=True):
        r = sizes.index(min(sizes))
        share[r].append(n)
        sizes[r] += n
    return tuple(share[rank])


def sharded_static(st: StaticMemory, units: Units, opt: OptimizerMemory, offload: bool) -> Static:
    """Each sharded weight component shrinks to rank 0's shard; quant states and buffers stay whole. With
    `offload`, the shards and the optimizer states live in host RAM."""
    weights = weight_components(st)
    host = opt.states_bytes
    for kind in ("quantized_weights", "base_weights", "lora_adapters"):
        shard = units.shard_of(kind)
        weights[kind] += (0 if offload else shard) - units.full_of(kind)  # what is left is not a parameter
        host += shard
    if not offload:
        return Static(weights, opt.states_bytes)
    return Static(weights, 0, host=host)


def _replicated_moment(m: Moment, static: Static) -> Priced:
    """Full gradients on every GPU: the moment as on one GPU (the `.grad`s of earlier micro-batches counted with
    the activations, as the single-GPU components count them)."""
    return Priced(m.phase, {**static.parts(), "gradients": m.gradients - m.held_grads,
                            "activations": m.activations + m.held_grads}, m.where)


def _fsdp_moment(m: Moment, static: Static, units: Units, grad_op: bool, offload: bool, held: int = 0,
                 parts: dict[str, int] | None = None) -> Priced:
    """One moment of the step under FSDP2 (see the module docstring for each buffer's lifetime). `held`: the
    sharded gradients of earlier micro-batches; this micro-batch's reduced shards are added into them in place.
    `parts`: `static.parts()`, when the caller has it already."""
    n_layers, layer, root = len(units.layers), units.largest_layer, units.root
    ag = layer.padded if root.gpus > 1 else 0  # one flat all-gather output
    gathered = root.padded  # the root stays unsharded through forward and backward
    buffers = 0
    if m.phase == "forward":
        if m.where == "layer":
            gathered += (m.layer + 1 if grad_op else 1) * layer.padded
        elif m.where == "reference":  # DPO's reference forward runs every unit again: priced at the last one
            gathered += (n_layers if grad_op else 1) * layer.padded
        elif m.where == "head":
            gathered += n_layers * layer.padded if grad_op else 0
        buffers += ag  # the unit's flat all-gather output (the root's, at the embedding)
    elif m.where == "head":  # backward
        gathered += n_layers * layer.padded if grad_op else 0
        buffers += 0 if grad_op else ag
    elif m.where == "layer":  # backward
        gathered += (m.layer + 1 if grad_op else 1) * layer.padded
        if m.layer > 0 and not grad_op:
            buffers += ag  # the previous layer, prefetched
        if m.layer < n_layers - 1:
            buffers += layer.reduce  # the layer above's reduce-scatter input, kept until this post-backward
    elif m.where == "embedding":  # backward
        buffers += layer.reduce  # layer 0's reduce-scatter input
    grads = m.head_grads + (0 if offload or held else m.layers_done * layer.reduce // root.gpus) + held
    parts = static.parts() if parts is None else parts
    return Priced(m.phase, {**parts, "unsharded_params": gathered, "comm_buffers": static.buffers + buffers,
                            "gradients": grads, "activations": m.activations}, m.where)


def _fsdp_final_reduce(static: Static, units: Units, offload: bool, n_layers: int, step: Moment) -> Priced:
    """The root's post-backward in the final callback: unsharded root gradients copied into its reduce input;
    what outlives backward (the batch, a loop's outputs: the optimizer moment's activations) is still there."""
    root = units.root
    sharded = 0 if offload else n_layers * units.largest_layer.reduce // root.gpus
    return Priced("backward", {**static.parts(), "comm_buffers": static.buffers + root.reduce,
                               "gradients": root.grads + sharded, "activations": step.activations})


def _step(static: Static, step: Moment, grads: int, opt: OptimizerMemory, on_host: bool = False) -> Priced:
    """optimizer.step(): states, gradients and the step's temporaries (on the host when offloaded), beside what
    the single-GPU step holds there besides gradients and temporaries (the batch, a loop's outputs)."""
    return Priced("optimizer", {**static.parts(), "gradients": grads,
                                "optimizer_temporaries": 0 if on_host else opt.step_temp_bytes,
                                "activations": step.activations})
