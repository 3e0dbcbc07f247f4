"""Typed results: integer bytes, named components, per-phase peaks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, computed_field

PHASES = ("load", "forward", "backward", "optimizer")


class MemoryEstimate(BaseModel):
    """The estimate of one training step. All sizes are bytes.

    `components` splits the peak phase's live bytes; `phases` gives each phase's peak live bytes;
    `peak_bytes` is what `torch.cuda.max_memory_allocated()` reports for a steady-state step.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    plan: dict
    components: dict[str, int]
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

    @computed_field
    @property
    def peak_bytes(self) -> int:
        return max(self.phases.values())

    @computed_field
    @property
    def reserved_bytes(self) -> int | None:
        if self.allocator_reserve_bytes is None:
            return None
        return self.peak_bytes + self.allocator_reserve_bytes

    @computed_field
    @property
    def reserved_low_bytes(self) -> int | None:
        """The low end of `max_memory_reserved` (`reserved_bytes` is the high end, which `fits` uses)."""
        if self.allocator_reserve_bytes is None:
            return None
        low = self.allocator_reserve_low_bytes
        return self.peak_bytes + (self.allocator_reserve_bytes if low is None else low)

    @computed_field
    @property
    def total_gpu_bytes(self) -> int | None:
        """What the process takes on the card (nvidia-smi), high end: reserved + CUDA context + NCCL buffers.
        Paged optimizer states come on top while resident (`paged_bytes`); they page out rather than fail."""
        if self.reserved_bytes is None or self.cuda_context_bytes is None:
            return None
        return self.reserved_bytes + self.cuda_context_bytes + self.nccl_bytes

    @computed_field
    @property
    def total_gpu_low_bytes(self) -> int | None:
        """The low end of the device total."""
        if self.reserved_low_bytes is None or self.cuda_context_bytes is None:
            return None
        return self.reserved_low_bytes + self.cuda_context_bytes + self.nccl_bytes

    @computed_field
    @property
    def fits(self) -> bool | None:
        return None if self.headroom_bytes is None else self.headroom_bytes >= 0

    @computed_field
    @property
    def paged_spill_bytes(self) -> int | None:
        """Paged optimizer states that do not fit beside the rest: bitsandbytes allocates them with
        cudaMallocManaged, so they page between host and GPU every step (slower) instead of raising an OOM.
        `fits` leaves paged states out; `vramplan suggest` counts them."""
        if self.headroom_bytes is None:
            return None
        return max(0, self.paged_bytes - max(0, self.headroom_bytes))

    @computed_field
    @property
    def headroom_bytes(self) -> int | None:
        if self.total_gpu_bytes is None or self.gpu_usable_bytes is None:
            return None
        return self.gpu_usable_bytes - self.total_gpu_bytes
