"""One training step on one GPU as a list of moments: every candidate peak, with what is live there split by kind.

Steady state (the step `torch.cuda.max_memory_allocated()` is read on): optimizer states exist, gradients were
set to None by `zero_grad()`, the loop is `loss = model(**batch).loss; loss.backward(); opt.step();
opt.zero_grad(set_to_none=True)` (HF Trainer's order: the model outputs, logits included, are dropped before
backward). Each decoder layer and the head are replayed on the tape (`layer_costs.py`); the step puts
them in order:

- forward, layer k: the step-wide tensors (batch, rotary tables, attention mask), what layers 0..k-1 keep for
  backward, layer k's input and its transient;
- forward, head: every layer's saved bytes and the head's (final norm, lm_head, loss) peak;
- backward, head and layer k (top to bottom): the finished gradients of the head and of layers above k, the
  saved bytes of layers below k, layer k's backward peak;
- backward, embedding: the dense embedding gradient (full fine-tuning, a trainable embedding copy);
- optimizer: every gradient and the step's temporaries.

Gradient checkpointing (transformers `GradientCheckpointingLayer` -> `torch.utils.checkpoint`): each decoder
layer keeps only its input; backward recomputes one layer at a time, then runs its backward.

A phase's peak is the largest moment of that phase (`phase_peaks`). The sharding engines (`engines/`) re-price
the same moments: they keep each moment's `activations` and replace its gradients, weights and buffers.
Hook points for what changes the layers or the head (offloading, fused losses): `layer_costs.layer_cost` and
`layer_costs.head_cost`.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import NamedTuple

from vramplan.architecture import traits_of
from vramplan.estimator.context import embedding_output_requires_grad, layer_context, stream_bytes
from vramplan.estimator.layer_costs import step_costs
from vramplan.estimator.programs import Ctx
from vramplan.estimator.step_tensors import attention_mask_bytes, batch_bytes, rope_bytes
from vramplan.estimator.tape import LayerCost
from vramplan.estimator.trainers import kept_outputs_bytes, reference_pass
from vramplan.estimator.weights import non_quantized_dtype_bytes, saves_module
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES


class Moment(NamedTuple):
    """Live bytes at one candidate peak above the weights and optimizer states, and the gradients inside them.
    (A NamedTuple: a step makes a dozen per estimate, and a frozen dataclass's __init__ is five times slower.)"""

    phase: str  # "forward" | "backward" | "optimizer"
    where: str  # "layer" | "head" (final norm, lm_head, loss) | "embedding" | "reference" (DPO) | "step"
    layer: int  # the decoder layer for "layer" moments, else -1
    live: int  # everything above the weights and optimizer states
    layer_grads: int  # one decoder layer's gradient bytes
    head_grads: int = 0  # finished gradients of the head inside `live` (lm_head, final norm)
    layers_done: int = 0  # decoder layers whose gradients are finished (inside `live`)
    held_grads: int = 0  # gradients of earlier micro-batches (accumulation; the optimizer step: all of them)
    temporaries: int = 0  # the optimizer step's temporaries

    @property
    def gradients(self) -> int:
        return self.held_grads + self.head_grads + self.layers_done * self.layer_grads

    @property
    def activations(self) -> int:
        """What no sharding engine changes: activations, the batch, the current unit's gradients, temporaries."""
        return self.live - self.gradients - self.temporaries


@lru_cache(maxsize=256)
def layers_to_visit(n_layers: int) -> tuple[int, ...]:
    """The layers whose moments bound every layer's: the two ends and their neighbours (moments are linear in
    the layer index between them, since each layer keeps and adds the same bytes)."""
    return tuple(sorted({0, min(1, n_layers - 1), max(n_layers - 2, 0), n_layers - 1}))


def phase_peaks(moments: tuple[Moment, ...] | list[Moment], base: int) -> dict[str, int]:
    """Each phase's peak: `base` plus its largest moment."""
    peaks: dict[str, int] = {}
    for m in moments:
        peaks[m.phase] = max(peaks.get(m.phase, 0), base + m.live)
    return peaks


def step_moments(model: ModelSpec, plan: TrainingPlan, grads_bytes: int, step_temp: int,
                 cuda: bool = True, context: Ctx | None = None) -> tuple[Moment, ...]:
    """The moments of one steady-state step of `plan` (its micro-batch as the step runs it: `trainers.step_plan`)
    on one GPU; `grads_bytes`: every trainable parameter's gradient; `step_temp`: the optimizer step's
    temporaries. `cuda=False`: what the CPU tracer sees (no dequantize inside gemm_4bit, float dropout masks).
    `context`: `layer_context(model, plan, cuda)` when the caller has it already."""
    s = _StepParts.of(model, plan, grads_bytes, cuda, context)
    fwd = [*_forward_moments(model, plan, s), *_embedding_forward(model, plan, s)]
    bwd = [*_backward_moments(s), *_embedding_backward(model, plan, s)]
    logits, outside = kept_outputs_bytes(plan, s.c, s.a, s.n, plan.method != "full" and (
        plan.grad_ckpt or embedding_output_requires_grad(plan)))
    # a custom loop's outputs, alive across the step (trainers.py); the leaf: `gradient_checkpointing_enable`
    # calls `enable_input_require_grads` (modeling_utils.py)
    out = [_plus(m, logits + outside) for m in fwd] + [_plus(m, logits) for m in bwd]
    out.append(Moment("optimizer", "step", -1, s.data + grads_bytes + step_temp + logits + outside, s.layer_grads,
                      held_grads=grads_bytes, temporaries=step_temp))
    return tuple(out)


@lru_cache(maxsize=1024)
def cpu_context(c: Ctx) -> Ctx:
    """The same plan's Ctx as the CPU tracer sees it: `layer_context(model, plan, cuda=False)`, whose only
    differing fields are these two."""
    return replace(c, kernel_dequant=False, cuda=False)


def _plus(m: Moment, extra: int) -> Moment:
    return m._replace(live=m.live + extra) if extra else m


class _StepParts(NamedTuple):
    """The pieces every moment is built from (bytes)."""

    c: Ctx
    a: int  # the residual stream's element size
    n: int  # decoder layers
    x: int  # one layer's input
    first: LayerCost  # layer 0 (its input is the embedding output)
    rest: LayerCost  # every other layer
    data: int  # the batch of every micro-batch (batch_bytes)
    act_base: int  # the batch and the rotary tables: alive through forward and backward
    mask: int  # the attention mask while the decoder runs
    held_mask: int  # ... after it (checkpointing: the checkpoints hold it until backward ends)
    held: int  # accumulation: the gradients of earlier micro-batches
    head: tuple[int, int, int, int]  # head_cost
    head_grads: int  # the head's finished gradients in backward
    all_grads: int  # every gradient at the end of backward

    @property
    def layer_grads(self) -> int:
        return self.rest.param_grads

    def below(self, k: int) -> int:
        """Bytes kept for backward by layers 0..k-1."""
        return 0 if k == 0 else self.first.keep + (k - 1) * self.rest.keep

    def below_fwd(self, k: int) -> int:
        """The same while the forward runs (the KV cache is still alive)."""
        return 0 if k == 0 else self.below(k) + self.first.cache + (k - 1) * self.rest.cache

    def cost(self, k: int) -> LayerCost:
        return self.first if k == 0 else self.rest

    @classmethod
    def of(cls, model: ModelSpec, plan: TrainingPlan, grads_bytes: int, cuda: bool, context: Ctx | None = None
           ) -> _StepParts:
        c = layer_context(model, plan, cuda) if context is None else context
        a = stream_bytes(plan)
        n = model.num_layers
        accumulate = plan.grad_accum > 1
        first, rest, head = step_costs(traits_of(model), model.intermediate_size, c, a, plan.grad_ckpt,
                                       plan.grad_ckpt and plan.ckpt_reentrant, embedding_output_requires_grad(plan),
                                       accumulate, n, bool(model.config.get("final_logit_softcapping")))
        data = batch_bytes(plan)
        # The mask lives while the decoder runs; under checkpointing the checkpoints hold it (as an argument of
        # the recompute) until backward ends.
        mask = attention_mask_bytes(model, plan)
        # Gradient accumulation: from the second micro-batch on every `.grad` exists through forward and backward
        # (the steady state the peak is read on); new weight gradients are added into them in place.
        head_grads = head[3]
        if accumulate:
            # A weight tied to the embedding gets two gradients; the engine holds lm_head's in the weight's input
            # buffer until the embedding's arrives at the end of backward, then sums them (out of place).
            tied = model.tied_embeddings and plan.method == "full"
            head_grads = c.vocab * c.hidden * DTYPE_BYTES[plan.param_dtype] if tied else 0
            all_grads = grads_bytes + head_grads
        else:
            all_grads = head_grads + first.param_grads + (n - 1) * rest.param_grads
        return cls(c, a, n, c.tokens * c.hidden * a, first, rest, data, data + rope_bytes(model, plan), mask,
                   mask if plan.grad_ckpt else 0, grads_bytes if accumulate else 0, head, head_grads, all_grads)


def _forward_moments(model: ModelSpec, plan: TrainingPlan, s: _StepParts) -> list[Moment]:
    """Layer k starts with the saved bytes of layers below it plus its input; then the head; DPO's reference
    forward runs on top of the policy's saved activations."""
    g = s.layer_grads
    out = [Moment("forward", "layer", k, s.act_base + s.mask + s.held + s.below_fwd(k) + s.x + s.cost(k).fwd_peak,
                  g, held_grads=s.held) for k in layers_to_visit(s.n)]
    after = s.act_base + s.held_mask + s.held
    head_peak, head_keep = s.head[0], s.head[1]
    out.append(Moment("forward", "head", -1, after + s.below_fwd(s.n) + s.rest.stash + head_peak, g,
                      held_grads=s.held))
    if reference_pass(plan):
        from vramplan.estimator.evaluation import reference_forward_peak

        ref = reference_forward_peak(model, plan, s.c, s.a)
        out.append(Moment("forward", "reference", -1, after + s.below(s.n) + head_keep + ref, g, held_grads=s.held))
    return out


def _backward_moments(s: _StepParts) -> list[Moment]:
    """The head's backward, then the layers top to bottom: gradients accumulate, lower layers' activations
    remain."""
    g = s.layer_grads
    after = s.act_base + s.held_mask + s.held
    _, head_keep, head_rel, _ = s.head
    out = [Moment("backward", "head", -1, after + s.below(s.n) + head_keep + head_rel, g, held_grads=s.held)]
    for k in layers_to_visit(s.n):
        done = 0 if s.held else s.n - 1 - k
        live = after + s.head_grads + done * g + s.below(k) + s.cost(k).bwd_abs
        out.append(Moment("backward", "layer", k, live, g, s.head_grads, done, s.held))
    return out


def _embedding_backward(model: ModelSpec, plan: TrainingPlan, s: _StepParts) -> list[Moment]:
    """The embedding's dense gradient, after every layer's backward (the rotary tables and the mask are gone)."""
    done = 0 if s.held else s.n

    def moment(live: int) -> Moment:
        return Moment("backward", "embedding", -1, live, s.layer_grads, s.head_grads, done, s.held)

    out = []
    vh = s.c.vocab * s.c.hidden * DTYPE_BYTES[plan.param_dtype]
    if plan.method == "full":
        # `embedding_dense_backward` makes a dense [vocab, hidden] gradient while the input's gradient is alive;
        # tied, it is summed with the held lm_head gradient: three at once.
        out.append(moment(s.data + s.all_grads + s.x + (2 * vh if model.tied_embeddings else vh)))
    elif saves_module(plan, "embed_tokens"):  # the same dense gradient of the trainable copy (its dtype)
        out.append(moment(s.data + s.all_grads + s.x + s.c.vocab * s.c.hidden * non_quantized_dtype_bytes(plan)))
    if plan.trainable_tokens:
        pd, index, vh_tokens, rows, cast = _trainable_tokens(model, plan)
        # the input's gradient is freed once the embedding's backward ran; the rows' gradient is selected after
        rows_grad = rows * pd + (rows * 4 if cast else 0)
        out.append(moment(s.data + index + s.all_grads + vh_tokens + max(s.x, rows_grad)))
    return out


def _embedding_forward(model: ModelSpec, plan: TrainingPlan, s: _StepParts) -> list[Moment]:
    """peft's trainable tokens build a whole new embedding matrix every forward (`_trainable_tokens`)."""
    if not plan.trainable_tokens:
        return []
    _, index, vh, _, cast = _trainable_tokens(model, plan)
    return [Moment("forward", "embedding", -1, s.data + index + cast + vh + s.x, s.layer_grads)]


def _trainable_tokens(model: ModelSpec, plan: TrainingPlan) -> tuple[int, int, int, int, int]:
    """peft `TrainableTokensLayer.forward_adapters`: `W.index_copy(0, idx, deltas.to(W))`, a whole new embedding
    matrix every forward, looked up by F.embedding (which saves only the ids, so it dies with the call); in
    backward `embedding_dense_backward` makes a dense [vocab, hidden] gradient of it while the input's gradient
    is alive, and index_copy's backward selects the rows (then cast to the fp32 delta).
    Returns (element size, index bytes, embedding bytes, row elements, cast bytes)."""
    pd = non_quantized_dtype_bytes(plan)
    rows = plan.trainable_tokens * model.hidden_size
    cast = rows * pd if pd != 4 else 0  # `deltas.to(W)`: a copy unless the embedding is fp32 too
    index = plan.trainable_tokens * 8  # torch.tensor(token_indices): int64, saved by index_copy for backward
    return pd, index, model.vocab_size * model.hidden_size * pd, rows, cast
