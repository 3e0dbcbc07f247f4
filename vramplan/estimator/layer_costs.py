"""One decoder layer and the head of the step, replayed on the tape: what each keeps for backward, its forward and
backward transients and its gradients (`LayerCost`, `head_cost`). `step.py` builds the step's moments from them;
`evaluation.py` replays the same layer without saving. Activation offloading replays the layer on an
`OffloadTape` (`offloading.offloaded_layer_cost`). Each replay is a pure function of hashable arguments: cached.
"""

from __future__ import annotations

from functools import lru_cache

from vramplan.architecture import traits_of
from vramplan.estimator.context import stream_bytes
from vramplan.estimator.layers import decoder_layer
from vramplan.estimator.losses import loss_head
from vramplan.estimator.programs import Ctx
from vramplan.estimator.tape import LayerCost, Tape
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.traits import Traits


def layer_cost(model: ModelSpec, plan: TrainingPlan, c: Ctx, input_grad: bool) -> LayerCost:
    """One decoder layer of `model` under `plan` (`input_grad`: its input requires grad)."""
    return _one_layer(traits_of(model), model.intermediate_size, c, stream_bytes(plan), plan.grad_ckpt,
                      plan.grad_ckpt and plan.ckpt_reentrant, input_grad, plan.grad_accum > 1)


def _one_layer(traits: Traits, inter: int, c: Ctx, a: int, grad_ckpt: bool, reentrant: bool, input_grad: bool,
               accumulate: bool) -> LayerCost:
    if c.offload_activations:  # TRL activation offloading (offloading.py: loaded for such plans only)
        from vramplan.estimator.offloading import offloaded_layer_cost

        return offloaded_layer_cost(traits, inter, c, a, grad_ckpt, input_grad, accumulate)[0]
    return _layer_cost(traits, inter, c, a, grad_ckpt, reentrant, input_grad, accumulate)


@lru_cache(maxsize=4096)
def step_costs(traits: Traits, inter: int, c: Ctx, a: int, grad_ckpt: bool, reentrant: bool, first_grad: bool,
               accumulate: bool, layers: int, softcap: bool) -> tuple[LayerCost, LayerCost, tuple[int, int, int, int]]:
    """Layer 0, every other layer and the head of one step, in one cached call (hashing a Ctx costs as much as
    building the moments: once per step instead of three times)."""
    first = _one_layer(traits, inter, c, a, grad_ckpt, reentrant, first_grad, accumulate)
    rest = _one_layer(traits, inter, c, a, grad_ckpt, reentrant, True, accumulate) if layers > 1 else first
    return first, rest, head_cost(c, a, softcap, accumulate)


@lru_cache(maxsize=8192)
def _layer_cost(traits: Traits, inter: int, c: Ctx, a: int, grad_ckpt: bool, reentrant: bool,
                input_grad: bool, accumulate: bool = False) -> LayerCost:
    """Two tape replays of one decoder layer; a pure function of its (hashable) arguments, so cached."""
    x_bytes = c.tokens * c.hidden * a

    def run(tp: Tape) -> tuple[int, int, int]:
        x = tp.new(x_bytes, input_grad)
        if grad_ckpt:
            tp.refs[x] += 1  # torch.utils.checkpoint keeps the layer input for the recompute
        y = decoder_layer(tp, c, traits, x, a, inter)
        peak = tp.peak - x_bytes
        # what only autocast's weight cache or the KV cache holds: alive until the forward (or recompute) ends
        cached = tp.release_cached()
        tp.drop(y)  # the next layer (or the head) owns it from here
        return peak, y, cached

    fwd = Tape(checkpointing=grad_ckpt)  # the step's forward: under checkpointing nothing is saved
    fwd_peak, _, cached = run(fwd)
    bwd = Tape()  # the graph backward walks (rebuilt by the recompute under checkpointing)
    recompute_peak, y, _ = run(bwd)
    held = bwd.live
    if reentrant:  # CheckpointFunction.backward holds `outputs` of the recompute through its inner backward
        held += x_bytes
    bwd_rel, grads = bwd.backward(y, accumulate)
    bwd_abs = held + bwd_rel
    if grad_ckpt:  # the recompute runs while the incoming gradient (x-sized) is already allocated
        bwd_abs = max(bwd_abs, x_bytes + recompute_peak + x_bytes)
    return LayerCost(fwd_peak, fwd.live, cached, bwd_abs, recompute_peak, grads)


def _offload_tape() -> Tape:
    from vramplan.estimator.offloading import OffloadTape  # activation offloading plans only (import cost)

    return OffloadTape()


@lru_cache(maxsize=4096)
def head_cost(c: Ctx, a: int, softcap: bool, accumulate: bool = False) -> tuple[int, int, int, int]:
    """The final norm, lm_head and loss of `c.trainer` (`losses.loss_head`): (forward peak incl. its input,
    bytes kept for backward, backward peak above that, param grads)."""
    th = _offload_tape() if c.offload_activations else Tape()
    hx = th.new(c.tokens * c.hidden * a, True)
    loss = loss_head(th, c, hx, a, softcap, c.trainer, c.loss_type)
    peak, keep = th.peak, th.live
    rel, grads = th.backward(loss, accumulate)
    return peak, keep, rel, grads
