"""The plan space of `vramplan suggest`: the request, its ladders of cells and variants, and the probe that
builds and evaluates plans (memoised) and says whether they fit a GPU.

The space has two levels. A *cell* is what decides what you train: method, LoRA targets and rank (from a
ladder of four common adapters), and sequence length (powers of two from `min_seq`, up to 8192 or the model's
positions). A *variant* is how a cell is run: gradient checkpointing, optimizer, and micro-batch (a divisor of
the effective batch, the rest is gradient accumulation). Quantization is NF4 with double quant (FP4 and single
quantization never save memory over it) and attention is sdpa (flash_attention_2 takes the same memory, eager
more): the knob costs show them.

Several GPUs (`gpus > 1`): the micro-batch is per GPU (`effective_batch` counts the sequences of all of them),
and a variant also picks how the GPUs share the work, cheapest communication first (DIST_CHOICES): DDP
replicas, DeepSpeed ZeRO-2 (gradients and optimizer states split), FSDP (everything split, weights gathered
layer by layer), then offload to host RAM: ZeRO-Offload of the optimizer, FSDP's CPU offload of parameters,
gradients and states (FSDP-QLoRA stores the 4-bit weights in the 16-bit compute dtype so they shard). ZeRO-1,
ZeRO-3 and `fsdp_grad_op` are searched only when pinned with --sharding: each takes the memory of one of the
modes above at no less communication. Sharded engines get torch's fused AdamW: bitsandbytes' optimizers do not
take FSDP2's DTensor parameters, and ZeRO-Offload runs its own CPU Adam. Offloaded bytes must fit the host RAM
(`host_ram_bytes`, for all GPUs of the machine together).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from vramplan.api import estimate, with_device
from vramplan.errors import InputError, PlanError
from vramplan.estimator import MemoryEstimate
from vramplan.hardware import GpuProfile, check_runs_on, default_dtypes
from vramplan.models import ModelSpec
from vramplan.plan import INT_RANGES, TrainingPlan, allowed_offloads, make_plan
from vramplan.speed import StepTime, step_time
from vramplan.vocab import METHODS, fields_outside, methods_taking, outside_words

OBJECTIVES = ("quality", "speed", "memory")
METHOD_TIER = {"full": 2, "lora": 1, "qlora": 0}  # the quality objective's order: full > lora > qlora
# LoRA (targets, rank) in rising capacity: peft's default q_proj,v_proj at rank 8 (the QLoRA seeds' recipe) up
# to every linear layer at rank 64 (the QLoRA paper's setup, which matched 16-bit full fine-tuning).
ADAPTERS: tuple[tuple[str, int], ...] = (("default", 8), ("attention", 16), ("all-linear", 16), ("all-linear", 64))
OPTIMIZER_CHOICES = {
    "full": ("adamw_fused", "adamw_8bit", "paged_adamw_8bit"),
    "lora": ("adamw_fused", "paged_adamw_8bit"),
    "qlora": ("adamw_fused", "paged_adamw_8bit"),
}
# (sharding, offload) for several GPUs, in rising communication and falling GPU memory
DIST_CHOICES: tuple[tuple[str, str], ...] = (("ddp", "none"), ("zero2", "none"), ("fsdp", "none"),
                                             ("zero2", "optimizer"), ("fsdp", "params"))
SHARDED_OPTIMIZERS = ("adamw_fused",)


def takes_bnb_optimizers(parallelism: str) -> bool:
    """Whether the engine runs bitsandbytes' optimizers: one GPU and DDP do; FSDP2 and DeepSpeed get torch's."""
    return parallelism in ("none", "ddp")

SEQ_LADDER_CAP = 8192
DEFAULT_MIN_SEQ = 1024
# Documented ranges of the request's own numbers (suggest's help quotes them). Every search below is bounded by
# them: the micro-batch ladder has at most 240 divisors up to 2**20, the sequence ladder at most 14 rungs.
EFFECTIVE_BATCH_RANGE = (1, 1_048_576)
TOP_RANGE = (1, 100)


@dataclass(frozen=True)
class Request:
    """What the user asked: a model, a GPU (`gpus` of them), an objective, and the plan fields they fixed."""

    model: ModelSpec
    gpu: GpuProfile
    gpus: int = 1
    host_ram_bytes: int | None = None  # the machine's RAM for offloaded state (all its GPUs); None: unlimited
    objective: str = "quality"
    effective_batch: int = 16
    headroom: float = 0.1
    seq: int | None = None
    min_seq: int | None = None
    methods: tuple[str, ...] = ()  # empty: every method the pinned fields allow
    top: int = 5
    pinned: Mapping[str, Any] = field(default_factory=dict)
    gpu_dirs: tuple = ()  # extra GPU profile folders (--gpu-dir), for the smallest-GPU search
    # stored CUDA runs on this GPU (vramplan.measure.learning): they set each candidate's reserve and context
    # as `estimate --gpu` does; empty with --no-calibration or an empty store
    calibration: tuple = ()

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective: '{self.objective}' is not one of {', '.join(OBJECTIVES)}")
        if not 0 <= self.headroom < 1:
            raise InputError(f"--headroom: {self.headroom} must be a fraction in [0, 1), e.g. 0.1")
        ranges = {"effective_batch": EFFECTIVE_BATCH_RANGE, "top": TOP_RANGE, "seq": INT_RANGES["seq"],
                  "min_seq": INT_RANGES["seq"], "gpus": INT_RANGES["gpus"], "host_ram_bytes": (1, 1 << 60)}
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not lo <= value <= hi):
                flag = "--" + name.replace("_", "-").replace("-bytes", "")
                raise InputError(f"{flag} {value}: out of range; give an integer from {lo} to {hi}")
        if self.seq and self.min_seq:
            raise InputError("give --seq (one length) or --min-seq (the shortest acceptable), not both")
        cap = model_max_seq(self.model)
        if self.min_seq and self.min_seq > cap:
            raise InputError(f"--min-seq {self.min_seq}: beyond {self.model.name}'s context (max_position_embeddings "
                             f"{cap}); give --seq {self.min_seq} to plan that length anyway")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise InputError(f"--method: '{unknown[0]}' is not one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class Candidate:
    """One evaluated plan: its memory estimate, its speed, and what it takes on `gpu` by the same device model as
    `vramplan.api.estimate(model, plan, gpu=...)` (`device`). The device figures are simulated on first use only
    (`device_floor_bytes` lets a search prune a plan without them)."""

    plan: TrainingPlan
    estimate: MemoryEstimate  # GPU-less (the analytic peak and its components)
    speed: StepTime
    model: ModelSpec
    gpu: GpuProfile
    calibration: tuple = ()  # Request.calibration

    @cached_property
    def floor_bytes(self) -> int:
        """A lower bound of `gpu_bytes` (vramplan.device.device_floor_bytes), plus the paged states."""
        from vramplan.device import device_floor_bytes

        return device_floor_bytes(self.model, self.plan, self.estimate.peak_bytes, self.gpu) + self.estimate.paged_bytes

    @cached_property
    def device(self) -> MemoryEstimate:
        """`estimate(model, plan, gpu=...)`: the allocator simulation, the CUDA context and NCCL added."""
        device = with_device(self.model, self.plan, self.estimate, self.gpu)
        if self.calibration:  # the same correction layer as `estimate --gpu` (api.calibrated)
            from vramplan.measure.learning import correct, local_versions

            device, _ = correct(device, self.calibration, self.gpu, local_versions())
        return device

    @property
    def gpu_bytes(self) -> int:
        """Per GPU: reserved (high end) + CUDA context + NCCL + paged optimizer states."""
        return self.device.total_gpu_bytes + self.device.paged_bytes

    @property
    def host_bytes(self) -> int:
        """Host RAM the offloaded state takes, all GPUs together."""
        return self.estimate.host_offload_bytes * self.plan.gpus

    @property
    def tokens_per_s(self) -> float:
        return self.speed.tokens_per_s

    @property
    def peak_bytes(self) -> int:
        return self.estimate.peak_bytes


def adapter_ladder(pinned: Mapping[str, Any]) -> list[tuple[str, int]]:
    """ADAPTERS with the user's --targets/--rank substituted, duplicates dropped, capacity order kept."""
    out: list[tuple[str, int]] = []
    for targets, rank in ADAPTERS:
        item = (pinned.get("targets") or targets, pinned.get("rank") or rank)
        if item not in out:
            out.append(item)
    return out


def seq_ladder(req: Request) -> list[int]:
    """The sequence lengths tried: --seq alone, else min_seq and the powers of two above it up to the cap."""
    if req.seq:
        return [req.seq]
    cap = model_max_seq(req.model)
    lo = req.min_seq or min(DEFAULT_MIN_SEQ, cap)
    top = max(lo, min(cap, SEQ_LADDER_CAP))
    out, s = [lo], 1
    while s < top:
        s *= 2
        if lo < s <= top:
            out.append(s)
    return out


def model_max_seq(model: ModelSpec) -> int:
    return int(model.config.get("max_position_embeddings") or 131072)


def divisors(n: int) -> list[int]:
    """Every divisor of n, ascending, in O(sqrt n) steps."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


class Probe:
    """Builds plans for a request, evaluates them once (memoised), and says whether they fit."""

    def __init__(self, req: Request):
        self.req = req
        self.limit_bytes = self.limit_for(req.gpu)
        self.evaluated = 0
        self._memo: dict[tuple[TrainingPlan, str], Candidate] = {}
        self._estimates: dict[TrainingPlan, MemoryEstimate] = {}
        self.methods = self._allowed_methods()

    def _allowed_methods(self) -> tuple[str, ...]:
        pinned = self.req.pinned
        if self.req.methods:
            dist = self.dist_choices()[0]
            for method in self.req.methods:  # a pinned flag that does not apply raises a one-line PlanError
                foreign = [k for k in fields_outside(method, bool(pinned.get("load_in_8bit"))) if k in pinned]
                if foreign:
                    raise PlanError(outside_words(foreign[0], method))
                self.plan(method, ADAPTERS[0], 1024, True, self.optimizer_choices(method, dist)[0], 1, dist)
            return self.req.methods
        return methods_taking(pinned)  # the plan's field groups: a pinned QLoRA-only flag narrows to qlora

    def dtype_fields(self, method: str) -> dict[str, Any]:
        """The GPU's own dtypes (`hardware.default_dtypes`, as estimate --gpu) unless the user pinned one."""
        if any(k in self.req.pinned for k in ("param_dtype", "mixed_precision", "compute_dtype")):
            return {}
        return default_dtypes(self.req.gpu, method)

    def plan(self, method: str, adapter: tuple[str, int] | None, seq: int, grad_ckpt: bool, optimizer: str,
             batch: int, dist: tuple[str | None, str] = (None, "none")) -> TrainingPlan:
        outside = fields_outside(method, bool(self.req.pinned.get("load_in_8bit")))
        pinned = {k: v for k, v in self.req.pinned.items() if k not in outside}
        opts: dict[str, Any] = {"method": method, "seq": seq, "grad_ckpt": grad_ckpt, "optimizer": optimizer,
                                "batch": batch, "grad_accum": -(-self.per_gpu_batch() // batch)}
        if self.req.gpus > 1:
            opts.update(gpus=self.req.gpus, sharding=dist[0], offload=dist[1])
        if method != "full" and adapter:
            opts.update(targets=adapter[0], rank=adapter[1])
        opts.update(self.dtype_fields(method))
        opts.update({k: v for k, v in pinned.items() if k not in ("batch", "grad_accum", "seq")})
        return make_plan(**opts)

    def evaluate(self, plan: TrainingPlan, gpu: GpuProfile | None = None) -> Candidate:
        """The plan's candidate on `gpu` (the request's by default), memoised; a plan the GPU cannot run (bf16 or
        flash-attn 2 before Ampere) raises PlanError here, as `estimate(gpu=...)` does."""
        gpu = gpu or self.req.gpu
        cand = self._memo.get((plan, gpu.slug))
        if cand is None:
            check_runs_on(plan, gpu)
            e = self._estimates.get(plan)
            if e is None:
                self.evaluated += 1
                e = self._estimates[plan] = estimate(self.req.model, plan)
            cand = Candidate(plan, e, step_time(self.req.model, plan, gpu), self.req.model, gpu, self.req.calibration)
            self._memo[(plan, gpu.slug)] = cand
        return cand

    def limit_for(self, gpu: GpuProfile) -> int:
        """The most a plan may take on one `gpu`: its usable memory less the request's headroom."""
        return int(gpu.usable_bytes * (1 - self.req.headroom))

    def fits(self, plan: TrainingPlan) -> bool:
        return self.fits_candidate(self.evaluate(plan))

    def fits_candidate(self, cand: Candidate) -> bool:
        return self.host_fits(cand) and self.on_card(cand, self.limit_bytes)

    def may_fit(self, plan: TrainingPlan) -> bool:
        """Could the plan fit? Its host RAM and its device floor (no simulation): false means it cannot."""
        cand = self.evaluate(plan)
        return self.host_fits(cand) and cand.floor_bytes <= self.limit_bytes

    @staticmethod
    def on_card(cand: Candidate, limit_bytes: int) -> bool:
        """Does the plan stay within `limit_bytes` on its GPU? The floor prunes without simulating; a plan that
        passes it is verified by the simulation (never a screen's optimism)."""
        return cand.floor_bytes <= limit_bytes and cand.gpu_bytes <= limit_bytes

    def host_fits(self, cand: Candidate) -> bool:
        return self.req.host_ram_bytes is None or cand.host_bytes <= self.req.host_ram_bytes

    def per_gpu_batch(self) -> int:
        """Sequences each GPU trains per optimizer step (the effective batch split over the GPUs, rounded up)."""
        return -(-self.req.effective_batch // self.req.gpus)

    # Knob ranges, narrowed by what the user pinned --------------------------------------------------------
    def ckpt_choices(self) -> tuple[bool, ...]:
        pinned = self.req.pinned.get("grad_ckpt")
        return (pinned,) if pinned is not None else (False, True)

    def optimizer_choices(self, method: str, dist: tuple[str | None, str] = (None, "none")) -> tuple[str, ...]:
        pinned = self.req.pinned.get("optimizer")
        if pinned:
            return (pinned,)
        return OPTIMIZER_CHOICES[method] if takes_bnb_optimizers(dist[0] or "none") else SHARDED_OPTIMIZERS

    def dist_choices(self) -> tuple[tuple[str | None, str], ...]:
        """(sharding, offload) pairs to try: one GPU has none; pinned --sharding/--offload narrow DIST_CHOICES."""
        if self.req.gpus == 1:
            return ((None, "none"),)
        sharding, offload = self.req.pinned.get("sharding"), self.req.pinned.get("offload")
        pairs = tuple((sharding, o) for o in allowed_offloads(sharding)) if sharding else DIST_CHOICES
        out = tuple(p for p in pairs if offload is None or p[1] == offload)
        if not out:
            raise InputError(f"--offload {offload}: not available with --sharding {sharding}; "
                             f"choose one of {', '.join(allowed_offloads(sharding))}")
        return out

    def batch_choices(self) -> list[int]:
        b, pinned = self.per_gpu_batch(), self.req.pinned
        if pinned.get("batch"):
            return [pinned["batch"]]
        if pinned.get("grad_accum"):
            if b % pinned["grad_accum"]:
                raise InputError(f"--grad-accum {pinned['grad_accum']} does not divide --effective-batch {b}")
            return [b // pinned["grad_accum"]]
        return divisors(b)
