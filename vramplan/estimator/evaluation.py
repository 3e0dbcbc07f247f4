"""The evaluation step's peak (`plan.eval_batch`): a phase of its own, so the verdict fails when eval does not fit.

transformers 5 `Trainer.evaluate` -> `evaluation_loop` -> `prediction_step`, between training steps: the weights
and the optimizer states stay on the GPU, the gradients are None (`zero_grad(set_to_none=True)`), the model is in
eval mode (dropout off; checkpointing only acts in training, so `use_cache` is on and a DynamicCache fills up) and
the forward runs under `torch.no_grad()`: no layer keeps anything for a backward, but the decoder's own
`inputs_embeds` variable (LlamaModel.forward and its copies) holds the embedding output until the layers are done.
The loss is computed as in training (the full fp32 logits for `hf`/`loop`, TRL's fused head for `trl-sft`, which
also forces `use_cache=False`).

`prediction_loss_only` (True when no `compute_metrics` is given: `evaluate` passes it) returns the loss only.
Otherwise each step's logits go to `all_preds` (`EvalLoopContainer.add` -> `nested_concat`: a `torch.cat` of the
held logits and the new ones) and stay on the GPU until `eval_accumulation_steps` steps have run, when
`to_cpu_and_numpy` moves them to the host. At the k-th step the held (k - 1) batches, the new logits and the
concatenation (k batches) are alive at once: 2k batches of logits. The previous step's `logits` variable is
rebound only when `prediction_step` returns, so it lives through the next forward (the first `add` keeps the
tensor itself, not a copy). TRL's `SFTTrainer` returns
logits through an extra no-grad forward (`model(**logits_inputs)`), which builds them like `hf`.
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.estimator.tape import Tape
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan


def eval_plan(plan: TrainingPlan) -> TrainingPlan:
    """The plan the eval forward runs: the eval batch, one micro-batch, no dropout; `grad_ckpt` makes
    `layer_cost` replay the layers without saving anything, which is what `torch.no_grad()` does."""
    return plan.derive(batch=plan.eval_batch, grad_accum=1, grad_ckpt=True, ckpt_reentrant=False, lora_dropout=0.0)


def eval_peak(model: ModelSpec, plan: TrainingPlan, base: int, cuda: bool = True) -> int:
    """Peak live bytes of an eval step above nothing; `base`: weights and optimizer states. `cuda=False`: what the
    CPU tracer sees (no dequantized weight inside bitsandbytes' gemm_4bit)."""
    from vramplan.estimator.context import layer_context, stream_bytes
    from vramplan.estimator.layer_costs import layer_cost
    from vramplan.estimator.losses import loss_head
    from vramplan.estimator.step_tensors import attention_mask_bytes, batch_bytes, rope_bytes
    from vramplan.estimator.trainers import logits_bytes

    ep = eval_plan(plan)
    loss_only = plan.prediction_loss_only
    c = layer_context(model, ep, cuda)
    # Liger: `prediction_step` passes `skip_logits=True` only with prediction_loss_only; otherwise `lce_forward`
    # (not training) builds the logits with the plain lm_head and loss
    c = replace(c, dropout=False, use_cache=plan.trainer != "trl-sft", trainer=plan.trainer if loss_only else "hf",
                liger=c.liger if loss_only else c.liger - {"flce"})
    a = stream_bytes(ep)
    n = model.num_layers
    x = c.tokens * c.hidden * a
    layer = layer_cost(model, ep, c, False)
    cache = layer.cache  # nothing is kept: only the KV cache's copies stay until the forward returns
    live = base + batch_bytes(ep) + rope_bytes(model, ep) + attention_mask_bytes(model, ep)
    logits = logits_bytes(c, a)
    # all_preds holds k - 1 batches; the previous step's `logits` is one more, except at k = 2: the first `add`
    # stores the tensor itself (`self.tensors = tensors`), so all_preds *is* the previous logits
    k = plan.eval_accumulation_steps or 1
    held = 0 if loss_only else (k - 1) * logits + (logits if k > 2 else 0)
    # the decoder's `inputs_embeds` local keeps the embedding output alive until the base model returns
    embeds = x if n > 1 else 0
    layers_peak = live + held + (n - 1) * cache + embeds + x + layer.fwd_peak
    tp = Tape(checkpointing=True)  # no_grad: no node saves a tensor
    hx = tp.new(x, True)
    loss_head(tp, c, hx, a, bool(model.config.get("final_logit_softcapping")), c.trainer, c.loss_type)
    head_peak = live + held + n * cache + tp.peak
    concat = 0 if loss_only else live + 2 * plan.eval_accumulation_steps * logits
    return max(layers_peak, head_peak, concat)


def reference_forward_peak(model: ModelSpec, plan: TrainingPlan, c, a: int) -> int:
    """Transient of DPO's reference forward above what is live when it starts (the policy's saved activations):
    its own rotary tables, one layer at a time under no_grad (nothing kept), then the fused head's buffers."""
    from vramplan.estimator.layer_costs import layer_cost
    from vramplan.estimator.losses import trl_fused_head
    from vramplan.estimator.step_tensors import rope_bytes
    from vramplan.estimator.trainers import reference_ctx

    rc = reference_ctx(c)
    rp = plan.derive(grad_ckpt=True, ckpt_reentrant=False, grad_accum=1, lora_dropout=0.0)
    x = rc.tokens * rc.hidden * a
    layer = layer_cost(model, rp, rc, False)
    tp = Tape(checkpointing=True)
    trl_fused_head(tp, rc, tp.new(x, False), a)
    embeds = x if model.num_layers > 1 else 0  # the decoder's `inputs_embeds` local (see eval_peak)
    return rope_bytes(model, plan) + max(embeds + x + layer.fwd_peak, tp.peak)
