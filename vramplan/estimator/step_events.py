"""The allocation sequence of loading a model and running two training steps, for the allocator simulation.

The same programs the estimator counts with (`layers.decoder_layer`, `losses.loss_head`) run on a recording
`Tape`, so the sequence is the step's real order: every op's output, transient and free, gradients as
backward creates and drops them, weight gradients kept until `zero_grad(set_to_none=True)`.

Order (HF Trainer, one GPU):
1. Load, tensor by tensor in inventory order (transformers moves each loaded tensor to the device). A QLoRA
   linear arrives as a 16-bit tensor and is quantized on the device (bitsandbytes `Params4bit._quantize`:
   `w = self.data.contiguous().to(device)`, then `quantize_4bit`): the 16-bit copy is a transient. peft then adds
   the adapters (fp32).
2. Each step: the batch (`input_ids`, `labels` of every micro-batch: HF Trainer fetches them all first), then per
   micro-batch the rotary tables, the attention mask; forward layer by layer;
   the head and loss; backward (under checkpointing each layer recomputes, then runs its backward); the
   optimizer (states created at the first step, `_init_group`; foreach temporaries); `zero_grad` frees `.grad`.
   Gradient accumulation: the first micro-batch creates the `.grad`s, the second adds into them; the ones after
   repeat the second's sequence exactly (same sizes, same order), so two are replayed. Every step is the same
   program on a fresh tape: one is traced (per `StepInputs`) and repeated under each step's names.

Approximate: weight gradients are one block per node (peft/torch make one per parameter: same bytes, finer
blocks); the optimizer's foreach temporaries are one per trainable tensor in proportion to its size; nothing
runs on a second stream here (see `vramplan.device` for the communication pools of sharded plans).
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.architecture import traits_of
from vramplan.estimator.context import embedding_output_requires_grad, layer_context, stream_bytes
from vramplan.estimator.layers import decoder_layer
from vramplan.estimator.losses import loss_head
from vramplan.estimator.programs import Ctx
from vramplan.estimator.schedule import Event, Run
from vramplan.estimator.single_gpu import optimizer_for
from vramplan.estimator.step_tensors import attention_mask_bytes, rope_bytes
from vramplan.estimator.tape import Tape
from vramplan.estimator.weights import (
    non_quantized_dtype_bytes,
    quantized_layer_bytes,
    static_memory,
)
from vramplan.models import ModelCache, ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES


def _layer_program(model: ModelSpec):
    """The decoder-layer program the estimator counts with (`layer_costs.layer_cost` runs the same one), as the
    architecture's traits (`vramplan.traits`) shape it."""
    tr = traits_of(model)
    return lambda tp, c, x, a: decoder_layer(tp, c, tr, x, a, model.intermediate_size)


def _head_program(model: ModelSpec, s: StepInputs):
    """The final norm, LM head and loss of the plan's trainer (`losses.loss_head`, as `layer_costs.head_cost`)."""
    softcap = bool(model.config.get("final_logit_softcapping"))
    return lambda tp, c, x, a: loss_head(tp, c, x, a, softcap, s.trainer, s.loss_type)


def load_events(model: ModelSpec, plan: TrainingPlan, shards: int = 1) -> list[Event]:
    """Weights in inventory order, then the LoRA adapters. `shards` > 1: a parameter-sharding engine (FSDP,
    ZeRO-3) keeps 1/shards of each tensor on the device, quantized off the device (FSDP-QLoRA loads on the CPU and
    shards there: no 16-bit copy on the GPU)."""
    ev: list[Event] = []
    nq = non_quantized_dtype_bytes(plan)
    w16 = DTYPE_BYTES[plan.param_dtype]
    for i, t in enumerate(model.inventory.tensors):
        if plan.method == "qlora" and t.role == "linear":
            packed, consts, dq = quantized_layer_bytes(t.numel, plan.quant_blocksize, plan.double_quant)
            if shards == 1:
                ev.append((("w16", i), t.numel * w16))
            ev += [(("w", i), -(-packed // shards)), (("c", i), -(-consts // shards))]
            ev += [(("dq", i), -(-dq // shards))] if dq else []
            if shards == 1:
                ev.append((("w16", i), -1))
        else:
            ev.append((("w", i), -(-t.numel * (nq if plan.method == "qlora" else w16) // shards)))
    st = static_memory(model, plan)
    if plan.method != "full":
        ev += [(("lora", i), -(-n * st.trainable_dtype_bytes // shards)) for i, n in enumerate(st.trainable_numels)]
    return ev


@dataclass(frozen=True)
class StepInputs:
    """Everything one step's sequence reads from the plan: the step is traced once per record (plans that differ
    elsewhere, e.g. in the optimizer, share it)."""

    ctx: Ctx  # the layer context the programs read
    stream_bytes: int  # the residual stream's element size
    grad_ckpt: bool
    ckpt_reentrant: bool
    trainer: str
    loss_type: str | None
    batch: int
    seq: int
    grad_accum: int
    rope_bytes: int
    mask_bytes: int
    embedding_grad: bool  # the embedding output requires grad (its gradient is freed after each micro-batch)
    embedding_weight_grad_bytes: int  # full fine-tuning: embedding_dense_backward's [vocab, hidden] gradient


def step_inputs(model: ModelSpec, plan: TrainingPlan) -> StepInputs:
    c = layer_context(model, plan)
    return StepInputs(
        ctx=c, stream_bytes=stream_bytes(plan), grad_ckpt=plan.grad_ckpt, ckpt_reentrant=plan.ckpt_reentrant,
        trainer=plan.trainer, loss_type=plan.loss_type, batch=plan.batch, seq=plan.seq, grad_accum=plan.grad_accum,
        rope_bytes=rope_bytes(model, plan), mask_bytes=attention_mask_bytes(model, plan),
        embedding_grad=embedding_output_requires_grad(plan),
        embedding_weight_grad_bytes=c.vocab * c.hidden * DTYPE_BYTES[plan.param_dtype] if plan.method == "full" else 0)


def _forward(tp: Tape, model: ModelSpec, s: StepInputs, x: int) -> tuple[int, list[int]]:
    """Decoder layers then the head; returns the loss and each layer's input and output (for the recompute)."""
    layer = _layer_program(model)
    inputs = []
    tp.checkpointing = s.grad_ckpt
    for _ in range(model.num_layers):
        if s.grad_ckpt:
            tp.refs[x] += 1  # torch.utils.checkpoint keeps the layer input for the recompute
        inputs.append(x)
        x = layer(tp, s.ctx, x, s.stream_bytes)
        tp.release_cached()
    tp.checkpointing = False
    if s.grad_ckpt:
        tp.nodes.clear()  # the checkpointed layers' graph is rebuilt by each recompute
    return _head_program(model, s)(tp, s.ctx, x, s.stream_bytes), inputs + [x]


def _backward(tp: Tape, model: ModelSpec, s: StepInputs, loss: int, inputs: list[int], accumulate: bool) -> None:
    tp.backward(loss, accumulate)
    tp.drop(loss)
    if not s.grad_ckpt:
        return
    layer = _layer_program(model)
    for k in reversed(range(model.num_layers)):
        x = inputs[k]
        tp.nodes.clear()
        tp.refs[x] += 1
        y = layer(tp, s.ctx, x, s.stream_bytes)
        tp.release_cached()
        if not s.ckpt_reentrant:  # non-reentrant: the recompute's output is not kept
            tp.drop(y)
        tp.backward(y, accumulate, grad_key=inputs[k + 1])
        if s.ckpt_reentrant:  # CheckpointFunction.backward holds `outputs` through its inner backward
            tp.drop(y)
        tp.drop(x)


def step_events(model: ModelSpec, plan: TrainingPlan, steps: int = 2, shards: int = 1) -> list[Event]:
    """Load, then `steps` training steps (step 2 is the steady state `max_memory_reserved` is read on).
    `shards`: parameters and optimizer states sharded that many ways (the step itself is one GPU's)."""
    return step_events_marked(model, plan, steps, shards)[0]


def step_events_marked(model: ModelSpec, plan: TrainingPlan, steps: int = 2, shards: int = 1
                       ) -> tuple[list[Event], int]:
    """`step_events`, and the index of the first event of the first step's optimizer (what precedes it, loading
    and the forward and backward passes, does not depend on the optimizer): `step_runs` written out."""
    runs, at = step_runs(model, plan, steps, shards)
    ev: list[Event] = []
    for name, events in runs:
        ev += events if name is None else [((name, k), n) for k, n in events]
        at -= 1
        if at == 0:
            mark = len(ev)
    return ev, mark


def step_runs(model: ModelSpec, plan: TrainingPlan, steps: int = 2, shards: int = 1) -> tuple[list[Run], int]:
    """`step_events` as runs of events, and how many runs precede the first step's optimizer. Every step runs the
    same program on a fresh tape, so one step is recorded and repeated under each step's own name (the run's
    name: its keys are `(step, key)`, shared lists, no event rebuilt); only the first step creates the optimizer
    states (`_init_group`)."""
    st = static_memory(model, plan)
    opt = optimizer_for(st, plan)
    body, after = _one_step(model, step_inputs(model, plan))
    total = sum(st.trainable_numels) or 1
    temps = [(("tmp", i), opt.step_temp_bytes * n // total) for i, n in enumerate(st.trainable_numels)]
    tail = [e for e in temps if e[1] > 0] + [(k, -1) for k, n in temps if n > 0] + after
    states = [(("state", i), -(-opt.states_bytes * n // (total * shards))) for i, n in
              enumerate(st.trainable_numels) if opt.states_bytes]
    runs: list[Run] = [(None, load_events(model, plan, shards))]
    for step in range(steps):
        runs += [(step, body), (None, states), (step, tail)] if step == 0 else [(step, body), (step, tail)]
    return runs, 2


_STEPS = ModelCache(9)


def _one_step(model: ModelSpec, s: StepInputs) -> tuple[list[Event], list[Event]]:
    """One step's sequence before the optimizer (the batch, forward and backward of each micro-batch), and after
    its foreach temporaries (`zero_grad`, the batch's release). Cached per (model, inputs): the last few."""
    return _STEPS.get(model, s, lambda: _step_sequence(model, s))


def _step_sequence(model: ModelSpec, s: StepInputs) -> tuple[list[Event], list[Event]]:
    body: list[Event] = []
    tp = Tape(events=body)
    data = [tp.new(8 * s.batch * s.seq) for _ in range(2 * s.grad_accum)]
    for m in range(min(s.grad_accum, 2)):  # later micro-batches repeat the second one's sequence
        rope = tp.new(s.rope_bytes) if s.rope_bytes else None
        mask = tp.new(s.mask_bytes) if s.mask_bytes else None
        x = tp.new(s.ctx.tokens * s.ctx.hidden * s.stream_bytes, s.embedding_grad)
        loss, inputs = _forward(tp, model, s, x)
        _backward(tp, model, s, loss, inputs, accumulate=m > 0)
        if s.embedding_weight_grad_bytes and m == 0:  # embedding_dense_backward: the [vocab, hidden] gradient
            body.append((("p", "embed"), s.embedding_weight_grad_bytes))
        body += [(("g", x), -1)] if s.embedding_grad else []
        tp.drop(*[t for t in (rope, mask) if t is not None])
    after = _zero_grad(body, 0)
    tp.events = after
    tp.drop(*data)
    return body, after


def _zero_grad(ev: list[Event], start: int) -> list[Event]:
    """`zero_grad(set_to_none=True)`: every weight gradient of the step (events from `start` on) is released."""
    live: dict[object, None] = {}
    for key, n in ev[start:]:
        if isinstance(key, tuple) and key and key[0] == "p":
            if n >= 0:
                live[key] = None
            else:
                live.pop(key, None)
    return [(k, -1) for k in live]
