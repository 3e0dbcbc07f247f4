"""Step time and tokens/s of a training plan on a GPU: a roofline model good enough to rank plans.

It is not a benchmark. It counts the work of one optimizer step and divides by the GPU's datasheet rates:

* Matmul FLOPs per token, after Kaplan et al. (2020) and PaLM's MFU accounting (Chowdhery et al. 2022,
  appendix B): forward 2 N, backward 2 N for the input gradients plus 2 N for the weight gradients, where N
  counts the weights a token goes through (embedding lookups excluded, lm_head included, MoE experts scaled by
  experts_per_token / num_experts). Full fine-tuning is the familiar 6 N; LoRA and QLoRA skip the frozen
  weights' gradients (4 N, plus the adapters' own small matmuls). Gradient checkpointing runs each decoder
  layer's forward again (+2 N of the layers: 6 N -> 8 N, the usual x4/3 for full fine-tuning).
* Attention scores: 4 x seq x (heads x head_dim) FLOPs per token per layer forward (QK^T and AV), twice that
  backward, once more under recompute. sdpa and flash_attention_2 run causal kernels that skip the masked half;
  eager computes the full square.
* Roofline per micro-batch: the matmuls take max(FLOPs / (peak x MFU), weight bytes read / bandwidth); every
  matmul pass reads each 16-bit weight once, which bounds small micro-batches.
* QLoRA: bitsandbytes `MatMul4Bit` (autograd/_functions.py) dequantizes each 4-bit weight to a 16-bit copy
  before the matmul, in the forward and again in the backward (and in the recompute): per pass it reads
  0.5 and writes 2 bytes per weight, with a kernel that does not overlap the matmul.
* Memory-bound elementwise kernels (norms, residual adds, the MLP activation, RoPE): per layer forward about
  ten hidden-sized and three intermediate-sized activations are read and written, twice that backward; the
  loss reads and writes the logits a few times in fp32 (upcast, softmax, its gradient).
* The optimizer step is memory-bound: read parameters, gradients and states, write parameters and states.
* A fixed launch cost per decoder layer and pass (eager PyTorch runs a few dozen kernels per layer).

Ignored: data loading, communication, overlap between kernels, the fp32 copies of QLoRA's upcast norms and embeddings (autocast runs the matmuls in 16-bit), and paging: the
advisor only proposes plans whose paged optimizer states fit on the card.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.hardware import GpuProfile
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan

MFU = 0.40  # fraction of the dense 16-bit peak the matmuls reach in an HF Trainer step (assumption)
DEQUANT_BANDWIDTH_FRACTION = 0.5  # bitsandbytes dequantize_4bit reaches about half the memory bandwidth
LAUNCH_SECONDS_PER_LAYER_PASS = 0.2e-3  # ~40 kernels x 5 us per decoder layer per forward/backward pass
_ATTENTION_NAMES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"})
_PEFT_DEFAULT = ("q_proj", "v_proj")  # peft's default targets for llama/mistral/qwen/gemma; phi3: qkv_proj

# Bytes of optimizer state per trainable parameter, as a function of the parameter's own width.
_STATE_BYTES = {
    "adamw": lambda p: 2 * p, "adamw_fused": lambda p: 2 * p, "adamw_8bit": lambda p: 2,
    "paged_adamw_8bit": lambda p: 2, "paged_adamw_32bit": lambda p: 8, "adafactor": lambda p: 0,
    "sgd": lambda p: 0, "sgd_momentum": lambda p: p, "lion_8bit": lambda p: 1,
}
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class StepTime:
    """The time of one optimizer step (`grad_accum` micro-batches and the update), in seconds."""

    micro_batch_s: float  # forward + backward (+ recompute) of one micro-batch
    matmul_s: float  # of which: matmuls, the roofline's max(compute, weight reads)
    dequant_s: float  # of which: QLoRA 4-bit dequantization
    optimizer_s: float  # the update, once per step
    step_s: float
    tokens_per_s: float
    tflops: float  # the peak used (16-bit dense, or fp32 for fp32 matmuls)


def matmul_params(model: ModelSpec) -> int:
    """Weights one token is multiplied with: linears, lm_head (tied or not), router, its share of experts."""
    roles = model.inventory.numel_by_role
    experts = roles["experts"]
    if experts and model.num_experts:
        experts = experts * model.experts_per_token // model.num_experts
    return roles["linear"] + roles["router"] + experts + model.vocab_size * model.hidden_size


def lora_params(model: ModelSpec, targets: str, rank: int) -> int:
    """Trainable LoRA numels: rank x (in + out) for every targeted linear (peft `LoraLayer` A and B)."""
    groups = model.inventory.linear_groups
    if targets == "all-linear":
        names = list(groups)
    elif targets == "attention":
        names = [n for n in groups if n in _ATTENTION_NAMES]
    elif targets == "default":
        names = [n for n in _PEFT_DEFAULT if n in groups] or [n for n in ("qkv_proj",) if n in groups]
    else:
        names = [n for n in targets.split(",") if n in groups]
    return sum(rank * (groups[n].in_features + groups[n].out_features) for n in names)


def trainable_adapters(model: ModelSpec, plan: TrainingPlan) -> int:
    return lora_params(model, plan.targets or "default", plan.rank or 0) if plan.uses_lora else 0


def flops_per_token(model: ModelSpec, plan: TrainingPlan) -> float:
    """Training FLOPs per token: matmuls (forward, input grads, weight grads if full, recompute) + attention."""
    n = matmul_params(model)
    layers = n - model.vocab_size * model.hidden_size  # the recompute reruns the decoder layers, not lm_head
    adapters = trainable_adapters(model, plan)
    recompute = plan.grad_ckpt
    per_token = 4 * n + (2 * n if plan.method == "full" else 0) + (2 * layers if recompute else 0)
    per_token += 6 * adapters + (2 * adapters if recompute else 0)
    causal = 0.5 if plan.attn != "eager" else 1.0
    attn_width = model.num_heads * model.head_dim
    return per_token + 4 * plan.seq * attn_width * model.num_layers * (3 + recompute) * causal


def _peak_flops(gpu: GpuProfile, plan: TrainingPlan) -> float:
    if plan.param_dtype == "fp32" and not plan.mixed_precision:
        return gpu.fp32_tflops * 1e12
    if plan.activation_dtype == "bf16" and gpu.bf16_tflops_dense:
        return gpu.bf16_tflops_dense * 1e12
    return gpu.fp16_tflops_dense * 1e12


def step_time(model: ModelSpec, plan: TrainingPlan, gpu: GpuProfile) -> StepTime:
    """Seconds per optimizer step and tokens/s for `plan` on `gpu` (see the module docstring)."""
    n = matmul_params(model)
    tokens = plan.batch * plan.seq
    full = plan.method == "full"
    recompute = plan.grad_ckpt
    per_token = flops_per_token(model, plan)
    peak = _peak_flops(gpu, plan)
    bandwidth = gpu.bandwidth_bytes_per_s
    passes = 2 + full + recompute  # matmul passes over the weights per micro-batch
    weight_bytes = _DTYPE_BYTES[plan.param_dtype] * n * passes
    matmul_s = max(tokens * per_token / (peak * MFU), weight_bytes / bandwidth)
    dequant_s = 0.0
    if plan.method == "qlora":
        quantized = model.inventory.numel_by_role["linear"]
        dequant_s = (2 + recompute) * quantized * 2.5 / (bandwidth * DEQUANT_BANDWIDTH_FRACTION)
    act = _DTYPE_BYTES[plan.activation_dtype]
    elementwise = (10 * model.hidden_size + 3 * model.intermediate_size) * 2 * act * model.num_layers
    elementwise_s = tokens * (elementwise * (3 + recompute) + 4 * 4 * model.vocab_size) / bandwidth
    launch_s = model.num_layers * (2 + recompute) * LAUNCH_SECONDS_PER_LAYER_PASS
    micro_s = matmul_s + dequant_s + elementwise_s + launch_s
    trainable = model.num_params if full else trainable_adapters(model, plan)
    p = 4 if plan.method == "qlora" and plan.kbit_upcast else _DTYPE_BYTES[plan.param_dtype]
    optimizer = plan.optimizer or "adamw"
    opt_bytes = trainable * (3 * p + 2 * _STATE_BYTES.get(optimizer, lambda q: 2 * q)(p))
    optimizer_s = opt_bytes / bandwidth
    step_s = plan.grad_accum * micro_s + optimizer_s
    return StepTime(micro_s, matmul_s, dequant_s, optimizer_s, step_s,
                    tokens * plan.grad_accum / step_s, peak / 1e12)
