"""The single-GPU step as a list of moments: every candidate peak, with what is live there split by kind.

`core.estimate_memory` keeps the largest moment of each phase. A sharding engine re-prices moments unequally
(FSDP holds the *current* layer unsharded and the *finished* layers' gradients sharded), so it needs them all,
with the finished gradients apart from the rest. This module recomputes the moments from core's building
blocks (`layer_cost`, `_head_cost`), in the order `core.estimate_memory` composes them, for any decoder layer.

It is the one place outside core that reads core's internals; what core should export instead is this list.
Only differences between moments of a phase are used (`sharding.py` adds core's own phase peak back), so a term
that core adds to every moment of a phase (a batch, a rotary table) cannot make the sharded estimate drift.
`tests/test_sharding.py` checks that the largest moment of each phase is core's phase peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES


@dataclass(frozen=True)
class Moment:
    """Live bytes at one candidate peak, above the weights and optimizer states (core's `base`)."""

    phase: str  # "forward" | "backward"
    where: str  # "layer" (a decoder layer computes) | "head" (final norm, lm_head, loss) | "embedding"
    layer: int  # the decoder layer for "layer" moments, else -1
    live: int  # everything above base: activations, temporaries and gradients
    head_grads: int  # finished gradients of the head inside `live` (lm_head, final norm)
    layers_done: int  # decoder layers whose gradients are finished (inside `live`)
    layer_grads: int  # one decoder layer's gradient bytes

    @property
    def activations(self) -> int:
        """What no sharding engine changes: activations, the current unit's gradients, temporaries."""
        return self.live - self.head_grads - self.layers_done * self.layer_grads


def layers_to_visit(n_layers: int) -> list[int]:
    """The layers whose moments bound every layer's: the two ends and their neighbours (moments are linear in
    the layer index between them, since each layer keeps and adds the same bytes)."""
    return sorted({0, min(1, n_layers - 1), max(n_layers - 2, 0), n_layers - 1})


def step_moments(model: ModelSpec, plan: TrainingPlan) -> list[Moment]:
    """Forward and backward moments of a steady-state step on one GPU (core's composition, every layer kind)."""
    # core's internals, imported here so that a change in them breaks multi-GPU estimates only
    from vramplan.estimator.core import _ctx, _head_cost, embedding_output_requires_grad, layer_cost, stream_bytes

    c = _ctx(model, plan)
    a = stream_bytes(plan)
    n = model.num_layers
    x = c.tokens * c.hidden * a
    first = layer_cost(model, plan, c, embedding_output_requires_grad(plan))
    rest = layer_cost(model, plan, c, True) if n > 1 else first
    grads = rest.param_grads

    def below(k: int) -> int:
        return 0 if k == 0 else first.keep + (k - 1) * rest.keep

    def below_fwd(k: int) -> int:  # the same while the forward runs (a KV cache, where core models one)
        return 0 if k == 0 else below(k) + first.cache + (k - 1) * rest.cache

    def cost(k: int):
        return first if k == 0 else rest

    out = [Moment("forward", "layer", k, below_fwd(k) + x + cost(k).fwd_peak, 0, 0, grads)
           for k in layers_to_visit(n)]
    head_peak, head_keep, head_rel, head_grads = _head_cost(c, a, bool(model.config.get("final_logit_softcapping")))
    out.append(Moment("forward", "head", -1, below_fwd(n) + head_peak, 0, 0, grads))
    out.append(Moment("backward", "head", -1, below(n) + head_keep + head_rel, 0, 0, grads))
    for k in layers_to_visit(n):
        done = n - 1 - k
        live = head_grads + done * grads + below(k) + cost(k).bwd_abs
        out.append(Moment("backward", "layer", k, live, head_grads, done, grads))
    if plan.method == "full":
        # embedding backward: the dense [vocab, hidden] weight gradient while the input's gradient is alive; tied
        # to lm_head (whose gradient is already in .grad) AccumulateGrad adds the two out of place: one more.
        vh = c.vocab * c.hidden * DTYPE_BYTES[plan.param_dtype]
        all_grads = head_grads + first.param_grads + (n - 1) * rest.param_grads
        emb = 2 * vh if model.tied_embeddings else vh
        out.append(Moment("backward", "embedding", -1, all_grads + x + emb, head_grads, n, grads))
    return out
