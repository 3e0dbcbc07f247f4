"""Typed results: integer bytes, named components, per-phase peaks."""

from __future__ import annotations

from dataclasses import field

from vramplan.plan import TrainingPlan
from vramplan.record import Record

PHASES = ("load", "forward", "backward", "optimizer")
# The weights the model holds (the first six components); the compare table sums them.
WEIGHT_COMPONENTS = ("quantized_weights", "quant_constants", "double_quant_constants", "base_weights",
                     "reference_model", "lora_adapters")

# Components that only some plans have (DPO's reference copy, the multi-GPU engines' parts)
OCCASIONAL_COMPONENTS = ("reference_model", "master_weights", "comm_buffers", "unsharded_params")


class Components(Record):
    """The live bytes at the peak, by what holds them; `total` is their sum (the peak phase's live bytes).

    Field order is the order reports list them. The single-GPU step (estimator/single_gpu.py) fills the first eleven;
    the multi-GPU engines (estimator/engines/ddp_fsdp.py, engines/deepspeed.py) add `master_weights` (DeepSpeed's fp32
    partition), `unsharded_params` (gathered FSDP units / ZeRO-3 parameters) and `comm_buffers` (DDP buckets,
    reduce-scatter and all-gather buffers). A part no named field owns goes in `engine_parts` by name.
    """

    computed = ("total",)

    quantized_weights: int = 0  # bitsandbytes Params4bit: packed 4-bit codes
    quant_constants: int = 0  # QuantState.absmax (fp32, or uint8 codes under double quantization)
    double_quant_constants: int = 0  # QuantState.state2: the nested absmax and its code table
    base_weights: int = 0  # 16/32-bit parameters and buffers
    reference_model: int = 0  # trl-dpo without PEFT: the frozen reference copy
    lora_adapters: int = 0  # peft LoraLayer A/B (and DoRA magnitudes, trainable tokens, modules_to_save)
    optimizer_states: int = 0
    gradients: int = 0
    optimizer_temporaries: int = 0  # what optimizer.step() allocates while it runs
    master_weights: int = 0
    comm_buffers: int = 0
    unsharded_params: int = 0
    batch: int = 0  # input ids, labels and masks the trainer holds
    activations: int = 0  # activations, logits and loss: the rest of the peak
    engine_parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.items_bytes().values())

    def _validate(self) -> None:
        for name, value in self.items_bytes().items():
            if value < 0:
                raise ValueError(f"{name}: {value} bytes: a size is never negative")

    def items_bytes(self) -> dict[str, int]:
        """name -> bytes for every component, in report order (named fields, then engine parts)."""
        named = {k: getattr(self, k) for k in type(self).field_names() if k != "engine_parts"}
        return {**named, **self.engine_parts}

    def listed(self) -> dict[str, int]:
        """The components a comparison lists: those of every single-GPU step, the others when they hold bytes."""
        return {k: v for k, v in self.items_bytes().items() if v or k not in OCCASIONAL_COMPONENTS}

    @property
    def weights_bytes(self) -> int:
        return sum(getattr(self, k) for k in WEIGHT_COMPONENTS)


class MemoryEstimate(Record):
    """The estimate of one training step. All sizes are bytes.

    `components` splits the peak phase's live bytes; `phases` gives each phase's peak live bytes;
    `peak_bytes` is what `torch.cuda.max_memory_allocated()` reports for a steady-state step.
    """

    computed = ("peak_bytes", "reserved_bytes", "reserved_low_bytes", "total_gpu_bytes", "total_gpu_low_bytes",
                "fits", "paged_spill_bytes", "headroom_bytes")

    model: str
    plan: TrainingPlan
    components: Components
    phases: dict[str, int]
    peak_phase: str
    paged_bytes: int = 0  # paged optimizer states in CUDA managed memory (outside the torch allocator)
    notes: tuple[str, ...] = ()  # what the user should hear about this plan (e.g. MoE experts left unquantized)
    # What the CPU tracer (vramplan calibrate --trace) sees where it differs from CUDA: bitsandbytes' CUDA
    # gemm_4bit allocates a dequantized weight inside its custom op, which a TorchDispatchMode cannot see.
    traced_phases: dict[str, int] | None = None
    # On a GPU (vramplan.device): the caching allocator's reserve above the peak as an interval from its simulation
    # (`allocator_reserve_bytes` is the high end), the driver's CUDA context (outside the allocator; the cuBLAS
    # workspace is in the reserve) and NCCL's communicator buffers.
    cuda_context_bytes: int | None = None
    allocator_reserve_bytes: int | None = None
    allocator_reserve_low_bytes: int | None = None
    blas_workspace_bytes: int = 0  # inside the reserve
    nccl_bytes: int = 0
    gpu: str | None = None
    gpu_usable_bytes: int | None = None
    # Several GPUs: the sizes above are per GPU (rank 0, the busiest) of a `gpus`-way data-parallel job
    gpus: int = 1
    sharding: str = "none"  # none | ddp | fsdp | fsdp_grad_op | zero1 | zero2 | zero3
    host_offload_bytes: int = 0  # host RAM each GPU's process needs for offloaded state (--offload)

    def _validate(self) -> None:
        """A peak is a phase's and no size is negative (a result read back from JSON is checked like a new one)."""
        if self.peak_phase not in self.phases:
            raise ValueError(f"peak_phase: '{self.peak_phase}' is not one of the phases ({', '.join(self.phases)})")
        sizes = {**{f"phases: {k}": v for k, v in self.phases.items()}, **{
            k: getattr(self, k) for k in ("paged_bytes", "cuda_context_bytes", "allocator_reserve_bytes",
                                          "allocator_reserve_low_bytes", "blas_workspace_bytes", "nccl_bytes",
                                          "gpu_usable_bytes", "host_offload_bytes")}}
        for name, value in sizes.items():
            if value is not None and value < 0:
                raise ValueError(f"{name}: {value} bytes: a size is never negative")
        if self.gpus < 1:
            raise ValueError(f"gpus: {self.gpus}: give 1 or more")

    @property
    def peak_bytes(self) -> int:
        return max(self.phases.values())

    @property
    def reserved_bytes(self) -> int | None:
        if self.allocator_reserve_bytes is None:
            return None
        return self.peak_bytes + self.allocator_reserve_bytes

    @property
    def reserved_low_bytes(self) -> int | None:
        """The low end of `max_memory_reserved` (`reserved_bytes` is the high end, which `fits` uses)."""
        if self.allocator_reserve_bytes is None:
            return None
        low = self.allocator_reserve_low_bytes
        return self.peak_bytes + (self.allocator_reserve_bytes if low is None else low)

    @property
    def total_gpu_bytes(self) -> int | None:
        """What the process takes on the card (nvidia-smi), high end: reserved + CUDA context + NCCL buffers.
        Paged optimizer states come on top while resident (`paged_bytes`); they page out rather than fail."""
        if self.reserved_bytes is None or self.cuda_context_bytes is None:
            return None
        return self.reserved_bytes + self.cuda_context_bytes + self.nccl_bytes

    @property
    def total_gpu_low_bytes(self) -> int | None:
        """The low end of the device total."""
        if self.reserved_low_bytes is None or self.cuda_context_bytes is None:
            return None
        return self.reserved_low_bytes + self.cuda_context_bytes + self.nccl_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.headroom_bytes is None else self.headroom_bytes >= 0

    @property
    def paged_spill_bytes(self) -> int | None:
        """Paged optimizer states that do not fit beside the rest: bitsandbytes allocates them with
        cudaMallocManaged, so they page between host and GPU every step (slower) instead of raising an OOM.
        `fits` leaves paged states out; `vramplan suggest` counts them."""
        if self.headroom_bytes is None:
            return None
        return max(0, self.paged_bytes - max(0, self.headroom_bytes))

    @property
    def headroom_bytes(self) -> int | None:
        if self.total_gpu_bytes is None or self.gpu_usable_bytes is None:
            return None
        return self.gpu_usable_bytes - self.total_gpu_bytes
