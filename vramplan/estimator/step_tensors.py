"""The tensors a training step holds outside the decoder layers' programs: the batch, the rotary tables and the
model-level attention mask. `step.py` puts them into every moment they are alive at."""

from __future__ import annotations

from vramplan.architecture import traits_of
from vramplan.estimator.context import attn_implementation, sdpa_sliding_mask, stream_bytes
from vramplan.estimator.trainers import batch_tensors
from vramplan.estimator.weights import rotary_embeddings
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan


def rope_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """The rotary tables: `rotary_emb(hidden_states, position_ids)` returns cos and sin of shape [1, seq, dim] in
    the hidden states' dtype (position_ids is `arange(seq).unsqueeze(0)`: one row whatever the batch). Every
    layer's `q * cos` saves them, so they live from the start of forward to the end of backward."""
    tables, dim = rotary_embeddings(model)
    return tables * 2 * plan.seq * dim * stream_bytes(plan)


def attention_mask_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """Bytes of the model-level attention mask. Eager attention gets an explicit 4-D float mask: `eager_mask`
    turns the [1, 1, S, S] bool mask into a [batch, 1, S, S] tensor in the embeddings' dtype
    (`torch.where(mask, 0, min)`). Models with sliding and full layers (Gemma 2/3: `layer_types`, else
    `Traits.attention_mask_kinds`) build one of each. sdpa and flash attention run with `is_causal`: no mask."""
    if sdpa_sliding_mask(model, plan):  # the bool [1, 1, S, S] mask (`batch` enters only by expand)
        return plan.seq * plan.seq
    if attn_implementation(model, plan) != "eager":
        return 0
    types = model.config.get("layer_types")
    n = len(set(types)) if types else traits_of(model).attention_mask_kinds
    return n * plan.batch * plan.seq * plan.seq * stream_bytes(plan)


def batch_bytes(plan: TrainingPlan) -> int:
    """input_ids and labels (int64; TRL's collator adds attention_mask: `trainers.batch_tensors`) of every
    micro-batch of the step: HF Trainer fetches the `grad_accum` batches of an update before the first forward
    (`get_batch_samples`); they live until the step ends."""
    return batch_tensors(plan) * 8 * plan.batch * plan.seq * plan.grad_accum
