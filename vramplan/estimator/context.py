"""What a plan gives the layer programs: the `Ctx` (sizes, dtypes, attention kind, MoE routing), the residual
stream's dtype and the attention transformers runs. Architecture differences are read from `vramplan.traits`.

The programs (`layers.py`, `programs.py`, `losses.py`) take a `Ctx`; `step.py` builds one per plan and replays
them. Pure arithmetic on the plan and the model spec.
"""

from __future__ import annotations

from functools import lru_cache

from vramplan.architecture import traits_of
from vramplan.errors import UnsupportedArchitectureError
from vramplan.estimator.liger import plan_kernels
from vramplan.estimator.programs import Ctx
from vramplan.estimator.trainers import adapter_bytes, kv_cache_in_forward, peft_input_grads
from vramplan.estimator.weights import expert_lora_targets, non_quantized_dtype_bytes, resolve_targets, saves_module
from vramplan.inventory import Inventory
from vramplan.models import ModelCache, ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES

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
        plan.grad_ckpt and ((plan.kbit and plan.kbit_upcast) or plan.ckpt_reentrant)
    )


def stream_bytes(plan: TrainingPlan) -> int:
    """dtype of the residual stream: the embedding's output dtype (fp32 after the kbit upcast, 4- or 8-bit)."""
    if plan.kbit:
        return non_quantized_dtype_bytes(plan)
    return DTYPE_BYTES[plan.param_dtype]


def attention_dropout(model: ModelSpec) -> float:
    """Dropout on the attention probabilities in training: the config's `attention_dropout` for a native record,
    the derived trait otherwise (its config class's default where config.json is silent)."""
    tr = traits_of(model)
    return float(model.config.get("attention_dropout") or 0.0) if tr.native else tr.attention_dropout


def attn_implementation(model: ModelSpec, plan: TrainingPlan) -> str:
    """The attention transformers runs: eager where the class has no sdpa path (`_supports_sdpa = False`, e.g.
    Gemma 2: sdpa cannot softcap; `Traits.sdpa`)."""
    if plan.attn == "sdpa" and not traits_of(model).sdpa:
        return "eager"
    return plan.attn


def sliding_window(model: ModelSpec) -> int | None:
    """The window every layer uses (`Traits.sliding_window_every_layer`: Mistral, Mixtral, Phi-3 read
    `sliding_window`); None when there is none. Qwen's optional per-layer windows (`use_sliding_window`) are off
    in every released config."""
    if traits_of(model).sliding_window_every_layer:
        w = model.config.get("sliding_window")
        return int(w) if w else None
    return None


def sdpa_sliding_mask(model: ModelSpec, plan: TrainingPlan) -> bool:
    """`_ignore_causal_mask_sdpa` cannot drop a sliding-window mask once the sequence reaches the window
    (`kv_length >= local_attention_size`): sdpa then runs with an explicit mask. So does a packed row
    (`plan.packing`: the block-diagonal mask, trainers.py), whose `plan.seq` here is the row (`step_plan`)."""
    w = sliding_window(model)
    return attn_implementation(model, plan) == "sdpa" and (plan.packing or w is not None and plan.seq >= w)


_CONTEXTS = ModelCache(4096)


def layer_context(model: ModelSpec, plan: TrainingPlan, cuda: bool = True) -> Ctx:
    """The `Ctx` the layer programs replay for this plan (`cuda=False`: what the CPU tracer sees). One object per
    (model, plan, cuda): the caches keyed on a Ctx (`step._step_costs`, `step.cpu_context`) then find it by
    identity instead of comparing its fields, and its ~40 fields are derived once."""
    return _CONTEXTS.get(model, (plan, cuda), lambda: _layer_context(model, plan, cuda))


def _layer_context(model: ModelSpec, plan: TrainingPlan, cuda: bool) -> Ctx:
    nq = non_quantized_dtype_bytes(plan)
    act = DTYPE_BYTES[plan.activation_dtype]
    tr = traits_of(model)
    attn = attn_implementation(model, plan)
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
        gemma_norm=tr.gemma_norm,
        layer_norm=tr.norm == "layer",
        layer_norm_fp32=tr.norm == "layer_fp32",
        norm_bias=tr.norm_bias,
        attn=attn,
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
        attn_softcap=attn == "eager" and bool(model.config.get("attn_logit_softcapping")),
        sdpa_mask=sdpa_sliding_mask(model, plan),
        dora=plan.use_dora,
        head_trainable=saves_module(plan, "lm_head"),
        logit_scale=tr.logit_scale,
        attn_dropout=attention_dropout(model),
        # LLM.int8: MatMul8bitLt keeps its input as a ctx attribute, which non-reentrant checkpointing keeps
        int8=plan.load_in_8bit, int8_fp16=plan.activation_dtype == "fp16",
        int8_ctx_keeps=plan.load_in_8bit and plan.grad_ckpt and not plan.ckpt_reentrant,
        liger=plan_kernels(tr, plan),
        offload_activations=plan.activation_offloading,
        dora_bias=_dora_bias(model) if plan.use_dora else frozenset(),
        **_moe_fields(model, plan, nq),
    )


def _dora_bias(model: ModelSpec) -> frozenset[str]:
    """The linears with a bias (DoRA's magnitude path adds it back: dora.py)."""
    return frozenset(n for n, g in model.inventory.linear_groups.items() if g.bias_numel)


def _moe_fields(model: ModelSpec, plan: TrainingPlan, nq: int) -> dict:
    """Routing sizes of the sparse MoE blocks, named by `Traits.moe`. Which layers are sparse is the inventory's
    (`inventory._is_moe_layer`: Qwen's `decoder_sparse_step`, `mlp_only_layers`, zero experts); the step
    replays one kind of layer, so a mix of dense and sparse layers is refused rather than guessed."""
    moe = traits_of(model).moe
    if moe is None:
        return {}
    inventory = model.inventory
    if plan.transformers == 4:  # the per-expert spec: the same layers, read from its fused inventory
        from vramplan.estimator.experts_v4 import fused_inventory  # --transformers 4 plans only (import cost)

        inventory = fused_inventory(model)
    sparse = sparse_layers(inventory)
    if not sparse:  # no experts configured: every MLP is dense, as the inventory builds it
        return {}
    if len(sparse) != model.num_layers:
        raise UnsupportedArchitectureError(
            f"{model.name}: {model.num_layers - len(sparse)} of {model.num_layers} decoder layers are dense "
            "(decoder_sparse_step / mlp_only_layers): a mix of dense and sparse MoE layers is not modelled")
    cfg = model.config
    experts, router = expert_lora_targets(model, plan)
    v4 = plan.transformers == 4  # 4.57: the top-k weights go back to the hidden dtype in every MoE block
    return {"experts": int(cfg[moe.experts_key]), "top_k": int(cfg["num_experts_per_tok"]),
            "moe_inter": int(cfg[moe.inter_key]),
            "shared_inter": int(cfg.get(moe.shared_inter_key) or 0) if moe.shared_inter_key else 0,
            "weights_fp32_scores": moe.fp32_routing_weights and not v4, "expert_w": nq,
            "expert_lora": experts, "router_lora": router, "experts_v4": moe.v4_linears if v4 else (),
            "norm_topk": not moe.norm_topk_key or bool(cfg.get(moe.norm_topk_key))}


@lru_cache(maxsize=64)
def sparse_layers(inventory: Inventory) -> frozenset[int]:
    """The decoder layers whose MLP is a sparse MoE block (they hold the fused expert tensors)."""
    return frozenset(t.layer for t in inventory.tensors if t.role == "experts" and t.layer is not None)
