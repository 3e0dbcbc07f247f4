"""The LM head and loss of each training loop, replayed on the tape (what `core._head_cost` runs).

- `hf` and `loop`: `programs.head`, transformers' `ForCausalLMLoss` over the full fp32 logits. (`loop` keeps the
  model outputs, logits included, beyond the head: `trainers.py` adds them to the step.)
- `trl-sft`: TRL 1.16's fused LM head. `SFTTrainer.__init__` calls `add_fused_lm_head(model, outputs=("log_probs",
  "entropy", "is_top1"))` (trl/trainer/utils.py) and `compute_loss` calls `model(**inputs, fused_lm_head=True)`:
  the backbone's last hidden state, shifted (`[:, :-1]`), only the positions whose label is not -100
  (`hidden_states[mask]`, a copy, on Triton devices), then `ChunkedLogProbFunction` (trl/kernels/
  chunked_logprob.py): 7 fp32 per-token running statistics and one `[min(N, 4096), 32768]` tile buffer in the
  compute dtype; the logits are never built. It saves the selected hidden states, the targets, `log_z` and the
  entropy. Its backward allocates an fp32 `grad_hidden` (and an fp32 `grad_weight` when the head trains), a tile
  buffer again, and casts them to the inputs' dtypes at the end. The per-token outputs are scattered back to
  [batch, seq - 1] (`new_zeros(...).masked_scatter`). The loss: `-log_probs` summed over the tokens; `dft`
  multiplies by `log_probs.exp().detach()` first (https://huggingface.co/papers/2508.05629).

Every label is assumed valid (no prompt masking): the upper bound, since the fused head scores only valid tokens.
"""

from __future__ import annotations

from vramplan.estimator import liger
from vramplan.estimator.programs import Ctx, head, rmsnorm
from vramplan.estimator.tape import Tape

# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE and trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE (TRL 1.16)
TRL_TOKEN_TILE = 4096
TRL_VOCAB_TILE = 32768
# ChunkedLogProbFunction.forward: running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum, max_before_target,
# target_logit: fp32 [N] each, allocated whatever `outputs` asks for
TRL_RUNNING_STATS = 7


def loss_head(tp: Tape, c: Ctx, x: int, a: int, softcap: bool, trainer: str = "hf", loss_type: str | None = None
              ) -> int:
    """The head of `trainer`: consumes x (the last decoder layer's output), returns the loss."""
    if trainer in ("trl-sft", "trl-dpo", "trl-kto"):  # DPO's and KTO's sequence losses on top are [rows]-sized
        return trl_fused_head(tp, c, x, a, dft=loss_type == "dft")
    if trainer == "trl-orpo":  # the full logits, whatever Liger patched (ORPO passes no labels)
        return orpo_head(tp, c, x, a, softcap)
    if "flce" in c.liger:  # Liger's `lce_forward`: the final norm, then fused linear cross-entropy (liger.py)
        h, ha = rmsnorm(tp, c, x, a, c.hidden)
        tp.drop(x)
        return liger.flce_head(tp, c, h, ha)
    return head(tp, c, x, a, softcap=softcap)


def trl_tile_bytes(c: Ctx, tokens: int, compute: int) -> int:
    """The `mm_buf` tile of ChunkedLogProbFunction: min(N, 4096) rows, always 32768 columns (even for a smaller
    vocabulary), in the compute dtype (autocast's, else the hidden states')."""
    return min(tokens, TRL_TOKEN_TILE) * TRL_VOCAB_TILE * compute


def trl_fused_head(tp: Tape, c: Ctx, x: int, a: int, dft: bool = False) -> int:
    """TRL 1.16 `SFTTrainer.compute_loss` through `add_fused_lm_head` on a CUDA device (Triton tile kernels)."""
    n = c.batch * (c.seq - 1)  # shifted positions, every label valid
    h, ha = rmsnorm(tp, c, x, a, c.hidden)  # final norm: `backbone_outputs.last_hidden_state`
    tp.drop(x)
    compute = c.compute if c.autocast else ha
    tile = trl_tile_bytes(c, n, compute)
    rows = min(n, TRL_TOKEN_TILE)
    # per tile: `hidden[tok].to(compute_dtype)` and `weight[voc].to(compute_dtype)` copy when the dtypes differ
    casts = (rows * c.hidden * compute if ha != compute else 0) + \
        (min(c.vocab, TRL_VOCAB_TILE) * c.hidden * compute if c.lm_head_w != compute else 0)
    mask = tp.op(n, grad=False)  # labels != -100 (bool)
    # hidden_states[mask]: a copy; IndexBackward scatters its gradient into zeros of the [:, :-1] shape, then
    # SliceBackward into zeros of h's shape
    hc = tp.op(n * c.hidden * ha, (h,), bwd_temp=n * c.hidden * ha)
    targets = tp.op(n * 8, grad=False)  # labels[mask]
    log_z = tp.op(n * 4, grad=False)
    entropy = tp.op(n * 4, grad=False)
    # backward: fp32 grad_hidden (the gradient itself when the hidden states are fp32), fp32 grad_weight when the
    # head trains (cast to the weight's dtype at the end: `.grad` is that cast), a new tile buffer, the casts
    trains = c.full or c.head_trainable
    grad_w = c.vocab * c.hidden * c.lm_head_w if trains else 0
    bwd = tile + casts + (n * c.hidden * 4 if ha != 4 else 0) + (c.vocab * c.hidden * 4 if trains and
                                                                  c.lm_head_w != 4 else 0)
    lp = tp.op(n * 4, (hc,), saves=(hc, targets, log_z, entropy), temp=TRL_RUNNING_STATS * n * 4 + tile + casts,
               bwd_temp=bwd, param_grad=grad_w)
    top1 = tp.op(n, grad=False)
    tp.drop(hc, targets, log_z)
    # `x.new_zeros(mask.shape).masked_scatter(mask, x)` for log_probs, entropy, is_top1
    outs = []
    for t, size in ((lp, 4), (entropy, 4), (top1, 1)):
        zeros = tp.op(n * size, grad=False)
        outs.append(tp.op(n * size, (t, zeros), saves=(mask,)))
        tp.drop(t, zeros)
    log_probs = outs[0]
    own_loss = tp.op(4, (log_probs,))  # the fused forward's own loss, unused by compute_loss
    tp.drop(h, own_loss)  # `backbone_outputs` dies when the fused forward returns
    per_token = tp.op(n * 4, (log_probs,))  # -outputs.log_probs
    if dft:  # per_token_loss * outputs.log_probs.exp().detach(): mul saves the detached factor
        p = tp.op(n * 4, grad=False)
        weighted = tp.op(n * 4, (per_token, p), saves=(p,))
        tp.drop(per_token, p)
        per_token = weighted
    loss = tp.op(4, (per_token,))
    tp.drop(per_token, mask, *outs)  # compute_loss returns only the loss
    tp.release_cached()
    return loss


def orpo_head(tp: Tape, c: Ctx, x: int, a: int, softcap: bool) -> int:
    """TRL 1.16 `trl.experimental.orpo.ORPOTrainer.get_batch_loss_metrics` (orpo_trainer.py) on 2 x batch rows
    (chosen, then rejected: `concatenated_inputs`); consumes x.

    `concatenated_forward`: the concatenated input_ids, attention_mask and labels (int64 [2B, S]); `model(...,
    use_cache=False)` returns the full logits (lm_head's dtype, no fp32 upcast: no labels are passed); `labels`
    cloned and masked. The chosen NLL: `all_logits[:B][..., :-1, :].contiguous()` (a copy) -> `CrossEntropyLoss`
    (log_softmax in the logits' dtype, saved). `get_batch_logps(all_logits[:, :-1], ...)`: `selective_log_softmax`
    on CUDA is TRL's Triton kernel (trl/kernels/logprob_entropy.py `_LogProbEntropyFunction`): four fp32 [2B, S-1]
    rows (logprobs, entropy, log_z, expected_logit), saving the logits view, log_z and expected_logit; its backward
    allocates `grad_logits = empty_like(logits)` [2B, S-1, V]. The odds ratio is [B]-sized. Backward: each slice
    of the logits allocates a zero tensor of its input's shape (`SliceBackward`): [B, S, V] then [2B, S, V] for the
    chosen path, [2B, S, V] for the log-probs path, added into one buffer (out of place)."""
    from vramplan.estimator.programs import autocast_mm

    rows, s, v = c.batch, c.seq, c.vocab
    b = rows // 2
    cat = tp.op(3 * rows * s * 8, grad=False)
    h, ha = rmsnorm(tp, c, x, a, c.hidden)
    tp.drop(x)
    trains = c.full or c.head_trainable
    if c.autocast:
        la = c.compute
        logits = autocast_mm(tp, c, h, ha, c.hidden, v, trains, weight_bytes=c.lm_head_w)
    else:
        la = max(ha, c.lm_head_w)
        logits = tp.op(rows * s * v * la, (h,), saves=(h,) if trains else (),
                       param_grad=v * c.hidden * c.lm_head_w if trains else 0)
    tp.drop(h)  # the base model's output dies with the model call (ORPO keeps only `outputs.logits`)
    if softcap:
        capped = tp.op(rows * s * v * la, (logits,), saves=(logits,))
        tp.drop(logits)
        logits = capped
    labels = tp.op(2 * rows * s * 8, grad=False)  # clone, then torch.where(attention_mask == 1, ...)
    chosen = b * (s - 1) * v * la
    # `[:B][..., :-1, :].contiguous()`. Its backward (after the log-probs path's, which made the logits' gradient
    # buffer): the incoming gradient goes with the inner SliceBackward's zeros [B, S, V], then the outer one's
    # zeros [2B, S, V] are added to the buffer out of place (InputBuffer: buffer, new and sum at once): beyond the
    # tape's in-place accumulation, one more [2B, S, V] less the incoming gradient already freed
    # One pair: `[:1][..., :-1, :]` is contiguous already (size-1 leading dim) and `.contiguous()` copies nothing;
    # LogSoftmaxBackward's input gradient then has no tensor of its own on the tape (bwd_temp)
    if b > 1:
        copy = tp.op(chosen, (logits,), bwd_temp=rows * s * v * la - chosen)
    else:
        copy = tp.op(0, (logits,), bwd_temp=rows * s * v * la)
    lsm = tp.op(chosen, (copy,), saves_out=True, bwd_temp=0 if b > 1 else chosen)
    tp.drop(copy)
    target = tp.op(b * (s - 1) * 8, grad=False)
    nll = tp.op(4, (lsm,), saves=(target,))
    tp.drop(lsm, target)
    # get_batch_logps: labels[:, 1:].clone(), the mask, torch.where; the kernel's four fp32 rows
    index = tp.op(rows * (s - 1) * (8 + 1 + 8), grad=False)
    stats = tp.op(2 * rows * (s - 1) * 4, grad=False)  # log_z, expected_logit (saved)
    # entropy (dropped). Backward: `grad_logits` [2B, S-1, V] while the saved logits live; the node then releases
    # them and SliceBackward's zeros [2B, S, V] take their place: the tape's new input gradient stands for both
    lp = tp.op(rows * (s - 1) * 4, (logits,), saves=(logits, stats, index), temp=rows * (s - 1) * 4)
    tp.drop(stats, index)
    masked = tp.op(rows * (s - 1) * 4, (lp,))  # (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    tp.drop(lp)
    mean_lp = tp.op(rows * 4, (masked,))
    tp.drop(masked)
    loss = tp.op(4, (nll, mean_lp))  # policy_nll_loss - beta * logsigmoid(log_odds).mean()
    tp.drop(nll, mean_lp, logits, labels, cat)
    tp.release_cached()
    return loss
