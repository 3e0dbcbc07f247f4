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

* Several GPUs (data parallel: every GPU runs the micro-batch above, tokens/s counts all of them). Collectives
  are rings: each GPU sends (N-1)/N of an all-gather's or reduce-scatter's bytes and twice that for an
  all-reduce, at LINK_EFFICIENCY of the profile's `peer_link_bytes_per_s` (the host link when the job has more
  GPUs than `peer_link_max_gpus`: an NVLink bridge joins two cards). Per micro-batch: FSDP / ZeRO-3 all-gather the sharded weights for the forward and again for
  the backward (not `fsdp_grad_op`, which keeps them), and reduce-scatter the gradients; ZeRO-2 reduce-scatters
  the gradients. Per step: DDP all-reduces the accumulated gradients, ZeRO-1 reduce-scatters them, and ZeRO-1/2
  all-gather the updated trainable weights after the step. A collective issued during a micro-batch overlaps
  its compute (the engines prefetch and bucket for that): the micro-batch takes the longer of the two, plus
  what cannot overlap: the pipeline's fill and drain. FSDP / ZeRO-3 gather the root unit (embeddings, final
  norm, lm_head) and the first layer before any compute, and reduce-scatter the last layer's and the root's
  gradients after it; DDP all-reduces its last bucket (`bucket_cap_mb`, 25 MiB) after the backward, DeepSpeed
  its last `reduce_bucket_size` (5e8 elements).
  Sharded optimizer states are updated by their owner only (1/N of the update each).
* Offload, over the host link (LINK_EFFICIENCY of `host_link_bytes_per_s`, not overlapped): `optimizer`
  (ZeRO-Offload) sends the rank's gradient shard to the host and takes its updated 16-bit weights back once
  per step; `params` (FSDP CPUOffloadPolicy, ZeRO-3 offload_param) copies the weight shard to the GPU before
  every all-gather and the gradient shard back every micro-batch. The update runs on the CPU, reading and
  writing parameters, gradients and states at HOST_OPTIMIZER_BYTES_PER_S, shared by the N ranks of one host.

Ignored: data loading, overlap between kernels, the fp32 copies of QLoRA's upcast norms and embeddings (autocast runs the matmuls in 16-bit), and paging: the
advisor only proposes plans whose paged optimizer states fit on the card.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.hardware import GpuProfile
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan

LINK_EFFICIENCY = 0.75  # fraction of a link's datasheet rate that NCCL collectives and copies reach (assumption)
HOST_OPTIMIZER_BYTES_PER_S = 20e9  # a CPU AdamW streaming states through host DRAM (assumption, unmeasured)
DDP_BUCKET_BYTES = 25 * 2**20  # torch DistributedDataParallel(bucket_cap_mb=25)
DEEPSPEED_BUCKET_NUMEL = 500_000_000  # DeepSpeed zero_optimization.reduce_bucket_size default
DEFAULT_LINK_BYTES_PER_S = 31_500_000_000  # PCIe 4.0 x16 per direction, for a profile that gives no link rates
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
    comm_s: float = 0.0  # collectives per step (several GPUs), overlapped with compute where issued in a micro-batch
    offload_s: float = 0.0  # host-link traffic and the CPU update (offload), not overlapped


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
    if plan.multi_gpu:
        return _data_parallel(model, plan, gpu, micro_s, matmul_s, dequant_s, optimizer_s, tokens, peak)
    step_s = plan.grad_accum * micro_s + optimizer_s
    return StepTime(micro_s, matmul_s, dequant_s, optimizer_s, step_s,
                    tokens * plan.grad_accum / step_s, peak / 1e12)


def _data_parallel(model: ModelSpec, plan: TrainingPlan, gpu: GpuProfile, micro_s: float, matmul_s: float,
                   dequant_s: float, optimizer_s: float, tokens: int, peak: float) -> StepTime:
    """One step on `plan.gpus` data-parallel GPUs (see the module docstring): compute, collectives, offload."""
    from vramplan.estimator.partition import build_units
    from vramplan.estimator.weights import static_memory

    n, mode, offload = plan.gpus, plan.parallelism, plan.offload
    st = static_memory(model, plan)
    units = build_units(model, plan)
    gathered = units.total("padded")  # what FSDP / ZeRO-3 shard and gather (padded)
    grads = sum(st.trainable_numels) * st.trainable_dtype_bytes
    trainable16 = sum(st.trainable_numels) * _DTYPE_BYTES[plan.activation_dtype]
    beyond_peer_link = gpu.peer_link_max_gpus is not None and n > gpu.peer_link_max_gpus
    peer = (gpu.host_link_bytes_per_s if beyond_peer_link else gpu.peer_link_bytes_per_s) or DEFAULT_LINK_BYTES_PER_S
    host = gpu.host_link_bytes_per_s or DEFAULT_LINK_BYTES_PER_S
    ring = (n - 1) / n / (peer * LINK_EFFICIENCY)  # seconds per byte of an all-gather or reduce-scatter
    # bytes through the ring: overlapped with a micro-batch's compute (every one, the last one) or not (fill and
    # drain: every one, the last one; after the step)
    per_micro = per_last = exposed = exposed_last = after = 0
    gathers = 1 if mode == "fsdp_grad_op" else 2  # FSDP / ZeRO-3 weight all-gathers per micro-batch
    ds_bucket = min(grads, DEEPSPEED_BUCKET_NUMEL * st.trainable_dtype_bytes)
    if mode == "ddp":
        per_last, exposed_last = 2 * grads, 2 * min(grads, DDP_BUCKET_BYTES)
    elif mode == "zero1":
        per_last, exposed_last, after = grads, ds_bucket, trainable16
    elif mode == "zero2":
        per_micro, exposed, after = grads, ds_bucket, trainable16
    else:  # fsdp, fsdp_grad_op, zero3
        per_micro = gathered * gathers + units.total("reduce")
        first, root = units.largest_layer, units.root
        exposed = root.padded + first.padded + root.reduce + first.reduce
    sharded_states = mode != "ddp"
    micro = max(micro_s, per_micro * ring) + exposed * ring
    last = max(micro_s, (per_micro + per_last) * ring) + (exposed + exposed_last) * ring
    comm_s = (plan.grad_accum - 1) * (micro - micro_s) + (last - micro_s) + after * ring
    link = 1 / (host * LINK_EFFICIENCY)
    offload_s = 0.0
    if offload != "none":
        # every rank updates its shard on the CPU: the whole update's bytes go through one host's DRAM
        offload_s = optimizer_s * gpu.bandwidth_bytes_per_s / HOST_OPTIMIZER_BYTES_PER_S
        if offload == "optimizer":
            offload_s += (grads + trainable16) / n * link
        else:
            offload_s += plan.grad_accum * (gathered * gathers + grads) / n * link
        optimizer_s = 0.0
    elif sharded_states:
        optimizer_s /= n
    step_s = (plan.grad_accum - 1) * micro + last + after * ring + optimizer_s + offload_s
    return StepTime(micro_s, matmul_s, dequant_s, optimizer_s, step_s, n * tokens * plan.grad_accum / step_s,
                    peak / 1e12, comm_s, offload_s)
