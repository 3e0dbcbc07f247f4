"""Compose a training step from its parts: static memory, per-layer tape replays, head, optimizer.

Steady state (the step `torch.cuda.max_memory_allocated()` is read on): optimizer states exist, gradients were
set to None by `zero_grad()`, the loop is `loss = model(**batch).loss; loss.backward(); opt.step();
opt.zero_grad(set_to_none=True)` (HF Trainer's order: the model outputs, logits included, are dropped before
backward).

Gradient checkpointing (transformers `GradientCheckpointingLayer` -> `torch.utils.checkpoint`): each decoder
layer keeps only its input; backward recomputes one layer at a time, then runs its backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vramplan.estimator.layers import decoder_layer
from vramplan.estimator.liger import plan_kernels
from vramplan.estimator.losses import loss_head
from vramplan.estimator.optimizer import (
    MIN_8BIT_SIZE,
    QMAP_BYTES,
    OptimizerMemory,
    optimizer_memory,
)
from vramplan.estimator.programs import Ctx
from vramplan.estimator.result import MemoryEstimate
from vramplan.estimator.tape import Tape
from vramplan.estimator.trainers import (
    adapter_bytes,
    reference_copy,
    reference_pass,
    step_plan,
    batch_tensors,
    kept_outputs_bytes,
    kv_cache_in_forward,
    peft_input_grads,
)
from vramplan.estimator.weights import (
    StaticMemory,
    expert_lora_targets,
    non_quantized_dtype_bytes,
    resolve_targets,
    rotary_embeddings,
    saves_module,
    static_memory,
    unquantized_experts_note,
)
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.traits import Traits, traits_of
from vramplan.units import DTYPE_BYTES


@dataclass(frozen=True)
class LayerCost:
    """One decoder layer's memory, from two tape replays. Bytes; "abs" values count from zero live."""

    fwd_peak: int  # forward transient above the live bytes at the layer's start (its input counted there)
    keep: int  # bytes the layer leaves alive for backward (saved tensors; under checkpointing its input)
    cache: int  # bytes alive until the forward returns only (the KV cache's copies no node saves)
    bwd_abs: int  # backward peak of the layer alone: its saved tensors, incoming grad, new grads, temps
    recompute_peak: int  # checkpointing: recompute transient above its input
    param_grads: int  # .grad bytes created by the layer's backward


# bitsandbytes' CUDA gemm_4bit dequantizes the weight and calls F.linear above this many rows (M = tokens) for
# every weight over 4 Mi elements on every arch (`_gemm_4bit_use_custom_cuda`: "custom wins up to M=512").
GEMM_4BIT_KERNEL_MAX_ROWS = 512


def kernel_dequantizes(plan: TrainingPlan) -> bool:
    """Whether CUDA's gemm_4bit dequantizes inside the op for this plan's micro-batch."""
    return plan.method == "qlora" and plan.batch * plan.seq > GEMM_4BIT_KERNEL_MAX_ROWS


def embedding_output_requires_grad(plan: TrainingPlan) -> bool:
    """The embedding output requires grad when the embedding is trainable, or when the
    `enable_input_require_grads` hook is on: peft's prepare_model_for_kbit_training installs it when
    checkpointing, and reentrant checkpointing needs it; TRL's SFTTrainer installs it on a PEFT model."""
    return plan.method == "full" or bool(plan.trainable_tokens) or saves_module(plan, "embed_tokens") or (
        peft_input_grads(plan)) or (
        plan.grad_ckpt and ((plan.method == "qlora" and plan.kbit_upcast) or plan.ckpt_reentrant)
    )


def _ctx(model: ModelSpec, plan: TrainingPlan, cuda: bool = True) -> Ctx:
    nq = non_quantized_dtype_bytes(plan)
    act = DTYPE_BYTES[plan.activation_dtype]
    return Ctx(
        tokens=plan.batch * plan.seq,
        batch=plan.batch,
        seq=plan.seq,
        hidden=model.hidden_size,
        heads=model.num_heads,
        kv_heads=model.num_kv_heads,
        head_dim=model.head_dim,
        vocab=model.vocab_size,
        norm_w=nq,
        linear_w=DTYPE_BYTES[plan.param_dtype],
        compute=act,
        quantized=plan.method == "qlora",
        lora=frozenset(resolve_targets(model, plan)) if plan.uses_lora else frozenset(),
        rank=plan.rank or 0,
        dropout=plan.lora_dropout > 0,
        full=plan.method == "full",
        gemma_norm=traits_of(model).gemma_norm,
        layer_norm=traits_of(model).norm == "layer",
        norm_bias=traits_of(model).norm_bias,
        attn=attn_implementation(model, plan),
        lm_head_w=nq,
        quant_w=DTYPE_BYTES[plan.param_dtype],
        quant_blocksize=plan.quant_blocksize,
        double_quant=plan.double_quant,
        kernel_dequant=cuda and kernel_dequantizes(plan),
        cuda=cuda,
        autocast=plan.mixed_precision is not None,
        use_cache=kv_cache_in_forward(plan),
        trainer=plan.trainer,
        lora_w=adapter_bytes(plan),
        loss_type=plan.loss_type,
        attn_softcap=attn_implementation(model, plan) == "eager" and bool(model.config.get("attn_logit_softcapping")),
        sdpa_mask=sdpa_sliding_mask(model, plan),
        dora=plan.use_dora,
        head_trainable=saves_module(plan, "lm_head"),
        liger=plan_kernels(model.model_type, plan),
        dora_bias=frozenset(n for n, g in model.inventory.linear_groups.items() if g.bias_numel and plan.use_dora),
        **_moe_fields(model, plan, nq),
    )


def _moe_fields(model: ModelSpec, plan: TrainingPlan, nq: int) -> dict:
    """Routing sizes of the sparse MoE blocks (every decoder layer sparse, as in the released configs)."""
    cfg = model.config
    experts, router = expert_lora_targets(model, plan)
    lora = {"expert_lora": experts, "router_lora": router}
    if model.model_type == "mixtral":
        return {"experts": int(cfg["num_local_experts"]), "top_k": int(cfg["num_experts_per_tok"]),
                "moe_inter": model.intermediate_size, "weights_fp32_scores": True, "expert_w": nq, **lora}
    if model.model_type in ("qwen2_moe", "qwen3_moe"):
        return {"experts": int(cfg["num_experts"]), "top_k": int(cfg["num_experts_per_tok"]),
                "moe_inter": int(cfg["moe_intermediate_size"]),
                "shared_inter": int(cfg.get("shared_expert_intermediate_size") or 0),
                "weights_fp32_scores": False, "expert_w": nq, **lora}
    return {}


def stream_bytes(plan: TrainingPlan) -> int:
    """dtype of the residual stream: the embedding's output dtype (fp32 after the kbit upcast)."""
    if plan.method == "qlora":
        return non_quantized_dtype_bytes(plan)
    return DTYPE_BYTES[plan.param_dtype]


def layer_cost(model: ModelSpec, plan: TrainingPlan, c: Ctx, input_grad: bool) -> LayerCost:
    return _layer_cost(traits_of(model), model.intermediate_size, c, stream_bytes(plan), plan.grad_ckpt,
                       plan.grad_ckpt and plan.ckpt_reentrant, input_grad, plan.grad_accum > 1)


@lru_cache(maxsize=8192)
def _layer_cost(traits: Traits, inter: int, c: Ctx, a: int, grad_ckpt: bool, reentrant: bool,
                input_grad: bool, accumulate: bool = False) -> LayerCost:
    """Two tape replays of one decoder layer; a pure function of its (hashable) arguments, so cached."""
    x_bytes = c.tokens * c.hidden * a

    def run(tp: Tape) -> tuple[int, int]:
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


@lru_cache(maxsize=4096)
def _head_cost(c: Ctx, a: int, softcap: bool, accumulate: bool = False) -> tuple[int, int, int, int]:
    """(forward peak incl. its input, bytes kept for backward, backward peak above that, param grads)."""
    th = Tape()
    hx = th.new(c.tokens * c.hidden * a, True)
    loss = loss_head(th, c, hx, a, softcap, c.trainer, c.loss_type)
    peak, keep = th.peak, th.live
    rel, grads = th.backward(loss, accumulate)
    return peak, keep, rel, grads


def rope_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """The rotary tables: `rotary_emb(hidden_states, position_ids)` returns cos and sin of shape [1, seq, dim] in
    the hidden states' dtype (position_ids is `arange(seq).unsqueeze(0)`: one row whatever the batch). Every
    layer's `q * cos` saves them, so they live from the start of forward to the end of backward."""
    tables, dim = rotary_embeddings(model)
    return tables * 2 * plan.seq * dim * stream_bytes(plan)


# Architectures whose transformers class has no sdpa path (`_supports_sdpa = False`: sdpa cannot softcap): the
# default attention there is eager.
_NO_SDPA = {"gemma2"}


def attn_implementation(model: ModelSpec, plan: TrainingPlan) -> str:
    if plan.attn == "sdpa" and model.model_type in _NO_SDPA:
        return "eager"
    return plan.attn


def sliding_window(model: ModelSpec) -> int | None:
    """The window every layer uses (Mistral, Mixtral, Phi-3: `sliding_window`); None when there is none.
    Qwen's optional per-layer windows (`use_sliding_window`) are off in every released config."""
    if model.model_type in ("mistral", "mixtral", "phi3"):
        w = model.config.get("sliding_window")
        return int(w) if w else None
    return None


def sdpa_sliding_mask(model: ModelSpec, plan: TrainingPlan) -> bool:
    """`_ignore_causal_mask_sdpa` cannot drop a sliding-window mask once the sequence reaches the window
    (`kv_length >= local_attention_size`): sdpa then runs with an explicit mask. So does a packed row
    (`plan.packing`: the block-diagonal mask, trainers.py), whose `plan.seq` here is the row (`step_plan`)."""
    w = sliding_window(model)
    return attn_implementation(model, plan) == "sdpa" and (plan.packing or w is not None and plan.seq >= w)


def attention_mask_bytes(model: ModelSpec, plan: TrainingPlan) -> int:
    """Bytes of the model-level attention mask. Eager attention gets an explicit 4-D float mask: `eager_mask` turns the [1, 1, S, S] bool mask into a
    [batch, 1, S, S] tensor in the embeddings' dtype (`torch.where(mask, 0, min)`). Models with sliding and full
    layers (Gemma 2/3, `layer_types`) build one of each. sdpa and flash attention run with `is_causal`: no mask."""
    if sdpa_sliding_mask(model, plan):  # the bool [1, 1, S, S] mask (`batch` enters only by expand)
        return plan.seq * plan.seq
    if attn_implementation(model, plan) != "eager":
        return 0
    types = model.config.get("layer_types")
    if types:
        n = len(set(types))
    else:
        n = 2 if model.model_type in ("gemma2", "gemma3_text") else 1
    return n * plan.batch * plan.seq * plan.seq * stream_bytes(plan)


def batch_bytes(plan: TrainingPlan) -> int:
    """input_ids and labels (int64; TRL's collator adds attention_mask: `trainers.batch_tensors`) of every
    micro-batch of the step: HF Trainer fetches the `grad_accum` batches of an update before the first forward
    (`get_batch_samples`); they live until the step ends."""
    return batch_tensors(plan) * 8 * plan.batch * plan.seq * plan.grad_accum


def _step_phases(model: ModelSpec, plan: TrainingPlan, base: int, grads_bytes: int, step_temp: int,
                 cuda: bool) -> dict[str, int]:
    """Forward, backward and optimizer-step peaks above nothing (`base`: weights and optimizer states)."""
    c = _ctx(model, plan, cuda)
    a = stream_bytes(plan)
    n_layers = model.num_layers
    x_bytes = c.tokens * c.hidden * a
    first = layer_cost(model, plan, c, embedding_output_requires_grad(plan))
    rest = layer_cost(model, plan, c, True) if n_layers > 1 else first
    data = batch_bytes(plan)
    base += data
    act_base = base + rope_bytes(model, plan)
    # The mask lives while the decoder runs; under checkpointing the checkpoints hold it (as an argument of the
    # recompute) until backward ends.
    mask = attention_mask_bytes(model, plan)
    held_mask = mask if plan.grad_ckpt else 0

    # Forward: layer k starts with the saved bytes of layers below it plus its input.
    def below(k: int) -> int:  # bytes kept by layers 0..k-1
        return 0 if k == 0 else first.keep + (k - 1) * rest.keep

    def below_fwd(k: int) -> int:  # the same while the forward runs (the KV cache is still alive)
        return 0 if k == 0 else below(k) + first.cache + (k - 1) * rest.cache

    fwd_peak = act_base + mask + x_bytes + first.fwd_peak
    if n_layers > 1:
        fwd_peak = max(fwd_peak, act_base + mask + below_fwd(n_layers - 1) + x_bytes + rest.fwd_peak)
    # Gradient accumulation: from the second micro-batch on every `.grad` exists through forward and backward
    # (the steady state the peak is read on); new weight gradients are added into them in place.
    accumulate = plan.grad_accum > 1
    held_grads = grads_bytes if accumulate else 0
    head_peak, head_keep, head_rel, head_grads = _head_cost(
        c, a, bool(model.config.get("final_logit_softcapping")), accumulate)
    # A weight tied to the embedding gets two gradients; the engine holds lm_head's in the weight's input buffer
    # until the embedding's arrives at the end of backward, then sums them (out of place).
    tied = model.tied_embeddings and plan.method == "full"
    vh = c.vocab * c.hidden * DTYPE_BYTES[plan.param_dtype]
    if accumulate:
        head_grads = vh if tied else 0
        fwd_peak += held_grads
    all_layers = below(n_layers)
    act_base += held_mask
    act_base += held_grads
    fwd_peak = max(fwd_peak, act_base + below_fwd(n_layers) + head_peak)
    if reference_pass(plan):  # DPO: the reference forward runs on top of the policy's saved activations
        from vramplan.estimator.evaluation import reference_forward_peak

        fwd_peak = max(fwd_peak, act_base + all_layers + head_keep + reference_forward_peak(model, plan, c, a))
    bwd_peak = act_base + all_layers + head_keep + head_rel

    # Backward through the layers, top to bottom: gradients accumulate, lower layers' activations remain.
    for k in sorted({n_layers - 1, min(1, n_layers - 1), 0}, reverse=True):
        cost = first if k == 0 else rest
        grads_so_far = head_grads if accumulate else head_grads + (n_layers - 1 - k) * rest.param_grads
        bwd_peak = max(bwd_peak, act_base + grads_so_far + below(k) + cost.bwd_abs)
    if accumulate:
        all_grads = grads_bytes + head_grads
    else:
        all_grads = head_grads + first.param_grads + (n_layers - 1) * rest.param_grads
    if plan.method == "full":
        # Embedding backward: `embedding_dense_backward` makes a dense [vocab, hidden] gradient while the
        # input's gradient is alive; tied, it is summed with the held lm_head gradient: three at once.
        bwd_peak = max(bwd_peak, base + all_grads + x_bytes + (2 * vh if tied else vh))
    elif saves_module(plan, "embed_tokens"):  # the same dense gradient of the trainable copy (its dtype)
        bwd_peak = max(bwd_peak, base + all_grads + x_bytes + c.vocab * c.hidden * non_quantized_dtype_bytes(plan))
    if plan.trainable_tokens:
        fwd_peak, bwd_peak = _trainable_tokens_peaks(model, plan, base, all_grads, x_bytes, fwd_peak, bwd_peak)
    # a custom loop's outputs, alive across the step (trainers.py)
    # the leaf: `gradient_checkpointing_enable` calls `enable_input_require_grads` (modeling_utils.py)
    logits, outside = kept_outputs_bytes(plan, c, a, n_layers, plan.method != "full" and (
        plan.grad_ckpt or embedding_output_requires_grad(plan)))
    return {"forward": fwd_peak + logits + outside, "backward": bwd_peak + logits,
            "optimizer": base + grads_bytes + step_temp + logits + outside}


def _trainable_tokens_peaks(model: ModelSpec, plan: TrainingPlan, base: int, all_grads: int, x_bytes: int,
                            fwd_peak: int, bwd_peak: int) -> tuple[int, int]:
    """peft `TrainableTokensLayer.forward_adapters`: `W.index_copy(0, idx, deltas.to(W))`, a whole new embedding
    matrix every forward, looked up by F.embedding (which saves only the ids, so it dies with the call); in
    backward `embedding_dense_backward` makes a dense [vocab, hidden] gradient of it while the input's gradient
    is alive, and index_copy's backward selects the rows (then cast to the fp32 delta)."""
    pd = non_quantized_dtype_bytes(plan)
    vh = model.vocab_size * model.hidden_size * pd
    rows = plan.trainable_tokens * model.hidden_size
    cast = rows * pd if pd != 4 else 0  # `deltas.to(W)`: a copy unless the embedding is fp32 too
    index = plan.trainable_tokens * 8  # torch.tensor(token_indices): int64, saved by index_copy for backward
    fwd_peak = max(fwd_peak, base + index + cast + vh + x_bytes)
    # the input's gradient is freed once the embedding's backward ran; the rows' gradient is selected after
    rows_grad = rows * pd + (rows * 4 if cast else 0)
    return fwd_peak, max(bwd_peak, base + index + all_grads + vh + max(x_bytes, rows_grad))


def _traced_phases(model: ModelSpec, plan: TrainingPlan, phases: dict[str, int], base: int, grads_bytes: int,
                   opt) -> dict[str, int] | None:
    """What the CPU tracer counts, where it differs from CUDA's allocator: no dequantize temporary inside
    gemm_4bit, float dropout masks, paged optimizer states as ordinary tensors, and bitsandbytes' two 1 KiB
    quantization maps from the optimizer's construction on (on CUDA they reach the device at step 1)."""
    qmaps = 2 * QMAP_BYTES if plan.optimizer in ("adamw_8bit", "paged_adamw_8bit", "lion_8bit") else 0
    kernel = kernel_dequantizes(plan) or (plan.uses_lora and plan.lora_dropout > 0)
    if not (kernel or qmaps or opt.paged_bytes):
        return None
    step = _step_phases(model, plan, base, grads_bytes, opt.step_temp_bytes, cuda=False) if kernel else phases
    # on CPU both maps exist from `fill_qmap` in __init__; the states already count the ones CUDA moves
    moved = QMAP_BYTES * (1 if plan.optimizer == "lion_8bit" else 2) if qmaps and _optimizer_entry(
        static_memory(model, plan), plan)[2] else 0
    traced = {p: step[p] + opt.paged_bytes + qmaps - moved for p in ("forward", "backward", "optimizer")}
    return {"load": phases["load"] + qmaps, **traced}


_OPT_CACHE: dict[tuple[int, str], tuple[StaticMemory, OptimizerMemory, bool]] = {}


def _optimizer_entry(st: StaticMemory, plan: TrainingPlan) -> tuple[StaticMemory, OptimizerMemory, bool]:
    """optimizer_memory walks every trainable tensor; StaticMemory objects are cached, so this is too.
    The flag says whether any tensor is large enough for 8-bit states."""
    key = (id(st), plan.optimizer)
    hit = _OPT_CACHE.get(key)
    if hit is None or hit[0] is not st:
        if len(_OPT_CACHE) > 4096:
            _OPT_CACHE.clear()
        opt = optimizer_memory(plan, st.trainable_numels, st.dtypes, st.trainable_shapes)
        hit = _OPT_CACHE[key] = (st, opt, any(n >= MIN_8BIT_SIZE for n in st.trainable_numels))
    return hit


def _optimizer(st: StaticMemory, plan: TrainingPlan) -> OptimizerMemory:
    return _optimizer_entry(st, plan)[1]


def estimate_memory(model: ModelSpec, plan: TrainingPlan) -> MemoryEstimate:
    """Peak live tensor bytes of a steady-state training step, per phase and per component.

    The phases are what `torch.cuda.max_memory_allocated()` sees on a CUDA device. Where the CPU tracer sees
    less (temporaries inside bitsandbytes' CUDA kernels), `traced_phases` gives its figures.
    """
    st = static_memory(model, plan)
    opt = _optimizer(st, plan)
    ref = st.total if reference_copy(plan) else 0  # DPO without PEFT: a frozen copy of the model (trainers.py)
    base = st.total + opt.states_bytes + ref
    step_p = step_plan(plan)  # DPO: chosen and rejected rows
    grads_bytes = st.trainable_bytes
    phases = {"load": st.total + ref, **_step_phases(model, step_p, base, grads_bytes, opt.step_temp_bytes,
                                                     cuda=True)}
    if plan.eval_batch:  # the eval step: a phase of its own (evaluation.py)
        from vramplan.estimator.evaluation import eval_peak

        phases["eval"] = eval_peak(model, plan, base)
    traced = _traced_phases(model, step_p, phases, base, grads_bytes, opt)
    peak_phase = max(phases, key=lambda p: phases[p])
    peak = phases[peak_phase]
    grads_at_peak = grads_bytes if peak_phase == "optimizer" else 0
    temps = opt.step_temp_bytes if peak_phase == "optimizer" else 0
    components = {
        "quantized_weights": st.quantized_weights,
        "quant_constants": st.quant_constants,
        "double_quant_constants": st.double_quant_constants,
        "base_weights": st.base_weights,
        **({"reference_model": ref} if ref else {}),
        "lora_adapters": st.lora_adapters,
        "optimizer_states": opt.states_bytes if peak_phase != "load" else 0,
        "gradients": grads_at_peak,
        "optimizer_temporaries": temps,
        "batch": batch_bytes(plan) if peak_phase != "load" else 0,
    }
    components["activations"] = peak - sum(components.values())
    return MemoryEstimate(
        model=model.name,
        plan=plan.model_dump(),
        components=components,
        phases=phases,
        peak_phase=peak_phase,
        paged_bytes=opt.paged_bytes,
        traced_phases=traced,
        notes=tuple(n for n in (unquantized_experts_note(model, plan),) if n),
    )
