"""What each training loop (`plan.trainer`) changes in the step `core.py` composes. One owner for these facts.

- `hf`: HF Trainer. `training_step` -> `compute_loss` keeps only the loss (`outputs` die before backward); the
  batch is input_ids + labels; `get_batch_samples` fetches the `grad_accum` batches of an update first.
- `loop`: a custom or accelerate loop, `outputs = model(**batch); accelerator.backward(outputs.loss);
  optimizer.step(); optimizer.zero_grad()` (accelerate's examples/nlp_example.py, most tutorials): `outputs` is
  only replaced when the next forward returns, so in the steady state the previous micro-batch's logits
  ([batch, seq, vocab] in the lm_head's output dtype) are alive through every phase.
- `trl-sft`: TRL 1.16 `SFTTrainer` (trl/trainer/sft_trainer.py): the fused LM head (losses.py); `use_cache=False`
  forced in `compute_loss` (no KV cache even without checkpointing); `model.enable_input_require_grads()` for a
  PEFT model with gradient checkpointing (the embedding output requires grad); a quantized model's trainable
  parameters cast to bf16 and no `prepare_model_for_kbit_training` (plan.py: kbit_upcast defaults off);
  `DataCollatorForLanguageModeling` adds an int64 attention_mask to the batch.
- `trl-dpo`: TRL 1.16 `DPOTrainer` (trl/trainer/dpo_trainer.py): the same model preparation and fused LM head;
  `DataCollatorForPreference` concatenates each pair's chosen and rejected rows (a micro-batch of `batch` pairs
  runs 2 x batch rows: input_ids, attention_mask, completion_mask); after the policy forward, a reference forward
  under `torch.no_grad()` with checkpointing disabled: with PEFT the same model inside `use_adapter(model, None)`
  (adapters disabled, no second copy), otherwise a frozen copy loaded like the model (`create_model_from_path`,
  same dtype and quantization). `precompute_ref_log_probs` computes them before training: no reference pass and,
  off FSDP, no reference model.
- `trl-kto`: TRL 1.16 `KTOTrainer` (trl/trainer/kto_trainer.py): DPO's model preparation, fused LM head and
  reference model (PEFT: the adapters disabled; else a frozen copy; `precompute_ref_log_probs`), on `batch` rows
  (unpaired: not doubled). `_compute_loss` runs, with `loss_type="kto"` (`calculate_KL`): a no-grad forward of the
  mismatched KL rows through the policy (before the policy forward: nothing saved yet, so no moment of its own),
  the policy forward, then under no_grad with checkpointing disabled the reference's KL forward and forward one
  after the other, on top of the policy's saved activations (the same moment as DPO's reference pass).
- `trl-orpo`: TRL 1.16 `trl.experimental.orpo.ORPOTrainer` (no reference model): chosen and rejected rows
  concatenated into one forward (2 x batch rows) with `use_cache=False`; the model prepared as HF Trainer's
  (fp32 adapters; `enable_input_require_grads()` under checkpointing); its loss over the full logits
  (`losses.orpo_head`). QLoRA is refused (`peft_module_casting_to_bf16` and an autocast region: not modelled).
- `packing` (trl-sft): TRL 1.16 `SFTTrainer.__init__` turns `padding_free` on for packing_strategy 'bfd'
  (`self.padding_free = args.padding_free or (args.packing and ...)`), and `DataCollatorForLanguageModeling`
  then flattens the micro-batch into one row (`torch.cat(input_ids)`) with `position_ids` and no attention_mask
  (input_ids, labels, position_ids: int64 each, plus tiny int32 cu_seq_lens). The step runs [1, batch x seq].
  flash_attention_2 takes the varlen kernel from the position ids (no mask, the same sizes per token);
  sdpa does not: transformers 5 `masking_utils._preprocess_mask_arguments` finds packed sequences
  (`find_packed_sequence_indices`, only when attention_mask is None) and `create_causal_mask` then sets
  `allow_is_causal_skip = False`, so a block-diagonal bool mask [1, 1, T, T] (T = batch x seq) is built and sdpa
  converts it to a float one per layer: quadratic in the packed row, not in `seq`. Labels at each sequence
  start are -100 (fewer fused-head rows): the estimate counts every position (the upper bound).
"""

from __future__ import annotations

from dataclasses import replace

from vramplan.estimator.programs import Ctx
from vramplan.plan import TrainingPlan

# int64 tensors in each micro-batch the collator returns: input_ids and labels, plus TRL's attention_mask; DPO:
# input_ids, attention_mask, completion_mask; ORPO (DPODataCollatorWithPadding): chosen and rejected input_ids,
# attention_mask and labels plus the prompt's ids and mask, 8 per pair (4 per row of the doubled batch; the prompt
# counted at the full length); KTO (DataCollatorForUnpairedPreference): input_ids, attention_mask, completion_mask
# and the mismatched KL rows' three
_BATCH_TENSORS = {"hf": 2, "loop": 2, "trl-sft": 3, "trl-dpo": 3, "trl-orpo": 4, "trl-kto": 6}
# trainers that call `add_fused_lm_head` and prepare the model as TRL does
FUSED_HEAD = ("trl-sft", "trl-dpo", "trl-kto")
REFERENCE = ("trl-dpo", "trl-kto")  # trainers with a reference model (or the adapters disabled)


def step_plan(plan: TrainingPlan) -> TrainingPlan:
    """The plan of the rows one micro-batch runs: DPO concatenates chosen and rejected (2 x batch rows); packing
    flattens the batch into one row of batch x seq tokens."""
    if plan.trainer in ("trl-dpo", "trl-orpo"):
        return plan.derive(batch=2 * plan.batch)
    if plan.packing:
        return plan.derive(batch=1, seq=plan.batch * plan.seq)
    return plan


def reference_pass(plan: TrainingPlan) -> bool:
    return plan.trainer in REFERENCE and not plan.precompute_ref_log_probs


def reference_copy(plan: TrainingPlan) -> bool:
    """DPOTrainer (and KTOTrainer) load a second, frozen model unless PEFT (adapters disabled) or precomputed
    log-probs."""
    return reference_pass(plan) and not plan.uses_lora


def adapter_bytes(plan: TrainingPlan) -> int:
    """Bytes per LoRA A/B element: fp32 (peft `autocast_adapter_dtype=True`), except under TRL's SFTTrainer for a
    quantized model, which casts every trainable parameter to bf16 after `get_peft_model` ("to follow the
    recommendations from the original paper", sft_trainer.py; `_is_quantized_model`: 4- or 8-bit)."""
    return 2 if plan.trainer in FUSED_HEAD and plan.kbit else 4


def batch_tensors(plan: TrainingPlan) -> int:
    return _BATCH_TENSORS[plan.trainer]


def kv_cache_in_forward(plan: TrainingPlan) -> bool:
    """transformers keeps `use_cache` on without checkpointing (a DynamicCache fills up); TRL's SFT turns it off."""
    return not plan.grad_ckpt and plan.trainer not in (*FUSED_HEAD, "trl-orpo")  # ORPO: use_cache=False


def peft_input_grads(plan: TrainingPlan) -> bool:
    """SFTTrainer calls `enable_input_require_grads()` on a PEFT model trained with checkpointing (ORPOTrainer on
    any model trained with checkpointing; a fully trained embedding's output requires grad anyway)."""
    return plan.trainer in (*FUSED_HEAD, "trl-orpo") and plan.uses_lora and plan.grad_ckpt


def reference_ctx(c: Ctx) -> Ctx:
    """The reference forward's context: no adapters (disabled, or a plain model), no dropout, no cache."""
    return replace(c, lora=frozenset(), dropout=False, use_cache=False, full=False)


def logits_bytes(c: Ctx, a: int) -> int:
    """The `logits` tensor of the CausalLM output: lm_head's output dtype (the final norm's output promoted with
    the head weight's dtype; autocast's dtype under mixed precision), every position."""
    if c.autocast:
        la = c.compute
    else:
        norm_out = a if c.gemma_norm else max(a, c.norm_w)
        la = max(norm_out, c.lm_head_w)
    return c.tokens * c.vocab * la


def kept_outputs_bytes(plan: TrainingPlan, c: Ctx, a: int, layers: int, input_leaf: bool) -> tuple[int, int]:
    """(in every phase, outside backward only): what the loop keeps alive beyond what HF Trainer keeps.

    `loop` holds the previous micro-batch's outputs until the next forward returns, and `outputs.loss` holds the
    autograd graph. So: the logits; `past_key_values` when transformers left `use_cache` on (no checkpointing):
    `DynamicCache.update` keeps every layer's key and value states ([batch, kv_heads, seq, head_dim] each, in the
    hidden states' dtype); and, when `enable_input_require_grads` made the output of a frozen embedding a leaf
    that requires grad (`input_leaf`), that leaf and the `.grad` backward leaves on it (the graph's
    AccumulateGrad node holds them). During backward the current cache is saved by attention and the leaf is a
    layer input (both counted), so only the logits are extra there."""
    if plan.trainer != "loop":
        return 0, 0
    cache = 2 * layers * c.tokens * c.kv_heads * c.head_dim * a if c.use_cache else 0
    leaf = 2 * c.tokens * c.hidden * a if input_leaf else 0
    logits = 0 if "flce" in c.liger else logits_bytes(c, a)  # Liger's `lce_forward` returns `logits=None`
    return logits, cache + leaf
