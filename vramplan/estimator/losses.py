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
    if trainer in ("trl-sft", "trl-dpo"):  # DPO's sequence losses on top are [pairs]-sized
        return trl_fused_head(tp, c, x, a, dft=loss_type == "dft")
    if "flce" in c.liger:  # Liger's `lce_forward`: fused linear cross-entropy, no logits (liger.py)
        return liger.flce_head(tp, c, x, a)
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
