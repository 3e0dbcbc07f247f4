"""Step time and tokens/s of a training plan on a GPU, by mechanism: the kernels one step launches, each timed
by what bounds it on that GPU (`vramplan.kernels`: measured matmul, flash-attention and bandwidth rates per GPU
generation, each with an interval). A ranking and sizing aid, not a benchmark; its measured error against
published runs is in `benchmarks/published_speed.py` (README "Speed").

One micro-batch is the sum of its kernels (`vramplan.step_kernels`: GEMMs per linear shape, LoRA's rank-r GEMMs
and glue, 4-bit dequantization in the forward, backward and recompute, flash / memory-efficient / eager
attention, bandwidth-bound norms, rotary, activations and the loss), or the CPU's launch time where that is
longer; a step is `grad_accum` micro-batches and the update (gradient clipping and the optimizer, bandwidth-bound).

Several GPUs (data parallel: every GPU runs the micro-batch above, tokens/s counts all of them). Collectives
are rings: each GPU sends (N-1)/N of an all-gather's or reduce-scatter's bytes and twice that for an
all-reduce, at LINK_EFFICIENCY of the profile's `peer_link_bytes_per_s` (the host link when the job has more
GPUs than `peer_link_max_gpus`: an NVLink bridge joins two cards). Per micro-batch: FSDP / ZeRO-3 all-gather the
sharded weights for the forward and again for the backward (not `fsdp_grad_op`, which keeps them), and
reduce-scatter the gradients; ZeRO-2 reduce-scatters the gradients. Per step: DDP all-reduces the accumulated
gradients, ZeRO-1 reduce-scatters them, and ZeRO-1/2 all-gather the updated trainable weights after the step. A
collective issued during a micro-batch overlaps its compute (the engines prefetch and bucket for that): the
micro-batch takes the longer of the two, plus what cannot overlap: the pipeline's fill and drain. FSDP / ZeRO-3
gather the root unit (embeddings, final norm, lm_head) and the first layer before any compute, and
reduce-scatter the last layer's and the root's gradients after it; DDP all-reduces its last bucket
(`bucket_cap_mb`, 25 MiB) after the backward, DeepSpeed its last `reduce_bucket_size` (5e8 elements). Sharded
optimizer states are updated by their owner only (1/N of the update each). Offload, over the host link
(LINK_EFFICIENCY of `host_link_bytes_per_s`, not overlapped): `optimizer` (ZeRO-Offload) sends the rank's
gradient shard to the host and takes its updated 16-bit weights back once per step; `params` (FSDP
CPUOffloadPolicy, ZeRO-3 offload_param) copies the weight shard to the GPU before every all-gather and the
gradient shard back every micro-batch. The update runs on the CPU at HOST_OPTIMIZER_BYTES_PER_S.

The interval: every rate at its low end gives `tokens_per_s_low`, at its high end `tokens_per_s_high`; the point
estimate uses the middle. Ignored: data loading and padding, kernel overlap across streams, paging (the advisor
only proposes plans whose paged optimizer states fit on the card), clocks throttled by power or heat.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.hardware import GpuProfile
from vramplan.kernels import BOUNDS, DEQUANT_FRACTION, Bound, rates, stream_s
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.step_kernels import dtypes, fp32_matmuls, micro_batch, optimizer_bytes
from vramplan.units import DTYPE_BYTES

LINK_EFFICIENCY = 0.75  # fraction of a link's datasheet rate that NCCL collectives and copies reach (assumption)
HOST_OPTIMIZER_BYTES_PER_S = 20e9  # a CPU AdamW streaming states through host DRAM (assumption, unmeasured)
DDP_BUCKET_BYTES = 25 * 2**20  # torch DistributedDataParallel(bucket_cap_mb=25)
DEEPSPEED_BUCKET_NUMEL = 500_000_000  # DeepSpeed zero_optimization.reduce_bucket_size default
DEFAULT_LINK_BYTES_PER_S = 31_500_000_000  # PCIe 4.0 x16 per direction, for a profile that gives no link rates
# Kept for callers that print the old assumptions (vramplan.recommend); the model no longer uses a fixed MFU: see
# StepTime.mfu for the utilisation a plan reaches.
MFU = 0.40
DEQUANT_BANDWIDTH_FRACTION = DEQUANT_FRACTION["mid"]


@dataclass(frozen=True)
class StepTime:
    """The time of one optimizer step (`grad_accum` micro-batches and the update), in seconds, at the middle of
    the rates' intervals; `tokens_per_s_low`/`_high` bound it with every rate at its low/high end."""

    micro_batch_s: float  # forward + backward (+ recompute) of one micro-batch
    matmul_s: float  # of which: GEMMs (decoder linears, lm_head, experts, LoRA adapters)
    dequant_s: float  # of which: QLoRA 4-bit dequantization
    optimizer_s: float  # the update and gradient clipping, once per step
    step_s: float
    tokens_per_s: float
    tflops: float  # the dense peak of the matmuls' dtype (16-bit, or fp32 for fp32 matmuls)
    comm_s: float = 0.0  # collectives per step (several GPUs), overlapped with compute where issued in a micro-batch
    offload_s: float = 0.0  # host-link traffic and the CPU update (offload), not overlapped
    attention_s: float = 0.0  # of micro_batch_s: the attention core (scores, softmax, PV)
    elementwise_s: float = 0.0  # of micro_batch_s: norms, residuals, rotary, activations, LoRA glue, the loss
    cpu_bound: bool = False  # the CPU's launches, not the GPU's kernels, set the micro-batch time
    tokens_per_s_low: float = 0.0
    tokens_per_s_high: float = 0.0

    model_tflops: float = 0.0  # achieved model FLOP/s / 1e12: `flops_per_token` without recompute x tokens/s

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation (PaLM's definition: recompute not counted) against `tflops`."""
        return self.model_tflops / self.tflops if self.tflops else 0.0


def matmul_params(model: ModelSpec) -> int:
    """Weights one token is multiplied with: linears, lm_head (tied or not), router, its share of experts."""
    roles = model.inventory.numel_by_role
    experts = roles["experts"]
    if experts and model.num_experts:
        experts = experts * model.experts_per_token // model.num_experts
    return roles["linear"] + roles["router"] + experts + model.vocab_size * model.hidden_size


def trainable_adapters(model: ModelSpec, plan: TrainingPlan) -> int:
    """LoRA numels: rank x (in + out) for every linear peft wraps (peft `LoraLayer` A and B), the targets resolved
    by the memory model's one rule (estimator.weights.resolve_targets)."""
    if not plan.uses_lora:
        return 0
    from vramplan.estimator.experts_v4 import transformers_model
    from vramplan.estimator.weights import resolve_targets

    groups = transformers_model(model, plan).inventory.linear_groups  # --transformers 4: each expert's linears
    return sum((plan.rank or 8) * (groups[n].in_features + groups[n].out_features)
               for n in resolve_targets(model, plan))


def flops_per_token(model: ModelSpec, plan: TrainingPlan) -> float:
    """Training FLOPs per token (Kaplan et al. 2020; PaLM appendix B): matmuls 2N forward, 2N for the input
    gradients, 2N for the weight gradients if full, 2N of the decoder layers again under recompute; attention
    scores 4 x seq x heads x head_dim per layer forward (causal kernels skip the masked half, eager does not)."""
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
    if fp32_matmuls(plan):
        return gpu.fp32_tflops * 1e12
    if plan.activation_dtype == "bf16" and gpu.bf16_tflops_dense:
        return gpu.bf16_tflops_dense * 1e12
    return gpu.fp16_tflops_dense * 1e12


def _one_bound(model: ModelSpec, plan: TrainingPlan, gpu: GpuProfile, bound: Bound,
               autocast: bool | None) -> StepTime:
    r = rates(gpu, bound)
    micro = micro_batch(model, plan, r, dtypes(plan, autocast))
    optimizer_s = stream_s(optimizer_bytes(model, plan), r)
    tokens, peak = plan.batch * plan.seq, _peak_flops(gpu, plan)
    parts = {"attention_s": micro.attention, "elementwise_s": micro.elementwise, "cpu_bound": micro.cpu > micro.gpu}
    if plan.multi_gpu:
        return _data_parallel(model, plan, gpu, micro.total, micro.matmul, micro.dequant, optimizer_s, tokens,
                              peak, parts)
    step_s = plan.grad_accum * micro.total + optimizer_s
    return StepTime(micro.total, micro.matmul, micro.dequant, optimizer_s, step_s, tokens * plan.grad_accum / step_s,
                    peak / 1e12, **parts)


def step_time(model: ModelSpec, plan: TrainingPlan, gpu: GpuProfile, *, autocast: bool | None = None) -> StepTime:
    """Seconds per optimizer step and tokens/s for `plan` on `gpu`, with its interval (module docstring).

    `autocast`: whether the forward runs under torch.autocast; default: only with `plan.mixed_precision` (the
    micro-trainer's loop). HF Trainer's `bf16=True` also autocasts 16-bit bases: for QLoRA after the kbit upcast
    that moves attention and lm_head from fp32 to 16-bit kernels (`vramplan.step_kernels`)."""
    low, mid, high = (_one_bound(model, plan, gpu, b, autocast) for b in BOUNDS)
    no_recompute = plan.derive(grad_ckpt=False) if plan.grad_ckpt else plan
    model_flops = flops_per_token(model, no_recompute) * mid.tokens_per_s
    return StepTime(**{**mid.__dict__, "tokens_per_s_low": low.tokens_per_s, "tokens_per_s_high": high.tokens_per_s,
                       "model_tflops": model_flops / 1e12})


def _data_parallel(model: ModelSpec, plan: TrainingPlan, gpu: GpuProfile, micro_s: float, matmul_s: float,
                   dequant_s: float, optimizer_s: float, tokens: int, peak: float,
                   parts: dict) -> StepTime:
    """One step on `plan.gpus` data-parallel GPUs (see the module docstring): compute, collectives, offload."""
    from vramplan.estimator.partition import build_units
    from vramplan.estimator.weights import static_memory

    n, mode, offload = plan.gpus, plan.parallelism, plan.offload
    st = static_memory(model, plan)
    units = build_units(model, plan)
    gathered = units.total("padded")  # what FSDP / ZeRO-3 shard and gather (padded)
    grads = sum(st.trainable_numels) * st.trainable_dtype_bytes
    trainable16 = sum(st.trainable_numels) * DTYPE_BYTES[plan.activation_dtype]
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
        offload_s = optimizer_bytes(model, plan) / HOST_OPTIMIZER_BYTES_PER_S
        if offload == "optimizer":
            offload_s += (grads + trainable16) / n * link
        else:
            offload_s += plan.grad_accum * (gathered * gathers + grads) / n * link
        optimizer_s = 0.0
    elif sharded_states:
        optimizer_s /= n
    step_s = (plan.grad_accum - 1) * micro + last + after * ring + optimizer_s + offload_s
    return StepTime(micro_s, matmul_s, dequant_s, optimizer_s, step_s, n * tokens * plan.grad_accum / step_s,
                    peak / 1e12, comm_s, offload_s, **parts)
