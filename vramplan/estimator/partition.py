"""How the parameters split into FSDP units and into per-rank shards. Pure arithmetic on the inventory.

- Units: FSDP is applied per decoder layer and once more at the root (`fully_shard(layer)` for each layer, then
  `fully_shard(model)`, as accelerate's `transformer_based_wrap` and torchtune do), so every decoder layer is one
  unit and the root unit holds the rest: embeddings, final norm, lm_head.
- Shards: FSDP2 chunks every parameter on dim 0 (`_fsdp_param.py`: `torch.chunk(dim=0)`, padded to a multiple of
  the world size: `padded_sharded_param_size`): rank 0 holds ceil(rows / N) rows, the all-gather output holds
  N times that. Gradients are reduce-scattered from a padded flat buffer (`foreach_reduce`) and stay views of it.
- 4-bit weights (QLoRA): bitsandbytes packs n weights into `(n + 1) // (2 * itemsize)` elements of
  `quant_storage` (`functional.quantize_4bit`); FSDP shards that tensor like any other. The quantization state
  (absmax, code, nested state) is an attribute, not a parameter: every rank keeps all of it.
- LoRA adapters: A [r, in] and B [out, r] in their dtype (`trainers.adapter_bytes`: fp32 from peft's
  `autocast_adapter_dtype`, bf16 under TRL's SFTTrainer on a quantized model), sharded on dim 0 as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from vramplan.estimator.optimizer import OptimizerMemory, optimizer_memory
from vramplan.estimator.trainers import adapter_bytes
from vramplan.estimator.weights import (
    non_quantized_dtype_bytes,
    quantized_layer_bytes,
    resolve_targets,
    transformers_model,
)
from vramplan.models import ModelCache, ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES

T = TypeVar("T")


@dataclass(frozen=True)
class Param:
    """One parameter as FSDP sees it: rows (dim 0) x rest elements of `itemsize` bytes."""

    rows: int
    rest: int
    itemsize: int
    trainable: bool
    kind: str = "base_weights"  # the single-GPU component it belongs to: quantized_weights | lora_adapters

    @property
    def numel(self) -> int:
        return self.rows * self.rest

    def shard_rows(self, gpus: int) -> int:
        return -(-self.rows // gpus)


@dataclass(frozen=True)
class Unit:
    """One FSDP unit on `gpus` ranks (sizes of rank 0, which holds the most). Bytes unless named otherwise."""

    gpus: int
    params: tuple[Param, ...]
    replicated_bytes: int = 0  # never sharded: bitsandbytes quant states
    grad_itemsize: int = 2
    padded: int = field(init=False)  # unsharded parameters, padded: the all-gather output and unsharded params
    grads: int = field(init=False)  # trainable gradients as autograd makes them (unpadded)
    reduce: int = field(init=False)  # the reduce-scatter input: trainable gradients, padded

    def __post_init__(self) -> None:
        n = self.gpus
        object.__setattr__(self, "padded", sum(p.shard_rows(n) * n * p.rest * p.itemsize for p in self.params))
        trainable = [p for p in self.params if p.trainable]
        object.__setattr__(self, "grads", sum(p.numel for p in trainable) * self.grad_itemsize)
        object.__setattr__(self, "reduce", sum(p.shard_rows(n) * n * p.rest for p in trainable) * self.grad_itemsize)

    @property
    def full(self) -> int:
        """Unpadded parameter bytes (what one GPU holds without sharding)."""
        return sum(p.numel * p.itemsize for p in self.params)

    @property
    def shard(self) -> int:
        return self.padded // self.gpus

    def shard_of(self, kind: str) -> int:
        """Rank 0's bytes of one component (`Param.kind`)."""
        return sum(p.shard_rows(self.gpus) * p.rest * p.itemsize for p in self.params if p.kind == kind)

    def full_of(self, kind: str) -> int:
        return sum(p.numel * p.itemsize for p in self.params if p.kind == kind)

    @property
    def trainable_shards(self) -> tuple[int, ...]:
        """Rank 0's element count of each trainable parameter (what its optimizer states are sized by)."""
        return tuple(p.shard_rows(self.gpus) * p.rest for p in self.params if p.trainable)

    @property
    def trainable_numels(self) -> tuple[int, ...]:
        return tuple(p.numel for p in self.params if p.trainable)


@dataclass(frozen=True)
class Units:
    """The root unit and the decoder-layer units (in order); sums are computed once (the advisor asks often)."""

    root: Unit
    layers: tuple[Unit, ...]
    _sums: dict = field(init=False, repr=False, compare=False)
    # what the engines derive from the units, filled on first use (`memo`): the units are cached per model
    _memo: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        sums: dict = {}
        for u in self.all:
            for attr in ("padded", "grads", "reduce", "full", "shard", "replicated_bytes"):
                sums[attr] = sums.get(attr, 0) + getattr(u, attr)
            for kind in ("quantized_weights", "base_weights", "lora_adapters"):
                sums["shard", kind] = sums.get(("shard", kind), 0) + u.shard_of(kind)
                sums["full", kind] = sums.get(("full", kind), 0) + u.full_of(kind)
        sums["largest_layer"] = max(self.layers, key=lambda u: u.padded) if self.layers else self.root
        sums["trainable_shards"] = tuple(n for u in self.all for n in u.trainable_shards)
        object.__setattr__(self, "_sums", sums)
        object.__setattr__(self, "_memo", {})

    @property
    def all(self) -> tuple[Unit, ...]:
        return (*self.layers, self.root)

    @property
    def largest_layer(self) -> Unit:
        return self._sums["largest_layer"]

    @property
    def trainable_shards(self) -> tuple[int, ...]:
        """Rank 0's element count of every trainable parameter, unit by unit."""
        return self._sums["trainable_shards"]

    def memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """`compute()`, once per key for these units (a pure function of the units and the key)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def sharded_optimizer(self, plan: TrainingPlan, dtype_bytes: int) -> OptimizerMemory:
        """The optimizer states and step temporaries of rank 0's shards (made on the sharded parameters;
        `optimizer_memory` reads only `plan.optimizer`)."""
        return self.memo(("optimizer", plan.optimizer, dtype_bytes),
                         lambda: optimizer_memory(plan, self.trainable_shards, dtype_bytes))

    def total(self, attr: str) -> int:
        return self._sums[attr]

    def shard_of(self, kind: str) -> int:
        return self._sums["shard", kind]

    def full_of(self, kind: str) -> int:
        return self._sums["full", kind]


_CACHE = ModelCache(4096)


def build_units(model: ModelSpec, plan: TrainingPlan, gpus: int | None = None) -> Units:
    """The plan's parameters grouped into units and sized for `gpus` ranks (default: the plan's).
    Cached per model object and the fields that matter (the advisor asks for many plans).
    `--transformers 4`: the model as 4.x builds it (MoE experts are nn.Linears: experts_v4.py)."""
    model = transformers_model(model, plan)
    args = (plan.method, plan.param_dtype, plan.storage_dtype, plan.quant_blocksize, plan.double_quant,
            plan.rank or 0, resolve_targets(model, plan) if plan.uses_lora else (), gpus or plan.gpus,
            non_quantized_dtype_bytes(plan), adapter_bytes(plan))
    return _CACHE.get(model, args, lambda: _build_units(model, *args))


def _build_units(model: ModelSpec, method: str, param_dtype: str, storage: str, blocksize: int,
                 double_quant: bool, rank: int, targets: tuple[str, ...], gpus: int, dense_bytes: int,
                 adapter_itemsize: int) -> Units:
    per_unit: dict[int, list[Param]] = {}
    replicated: dict[int, int] = {}
    store = DTYPE_BYTES[storage]
    full = method == "full"
    for t in model.inventory.tensors:
        key = -1 if t.layer is None else t.layer
        params = per_unit.setdefault(key, [])
        if method == "qlora" and t.role == "linear":
            _, consts, dq = quantized_layer_bytes(t.numel, blocksize, double_quant)
            params.append(Param((t.numel + 1) // (2 * store), 1, store, False, "quantized_weights"))
            replicated[key] = replicated.get(key, 0) + consts + dq
        else:
            rest = t.numel // t.shape[0]
            params.append(Param(t.shape[0], rest, dense_bytes, full))
        if t.role == "linear" and t.module in targets:
            out_f, in_f = t.shape
            params += [Param(rank, in_f, adapter_itemsize, True, "lora_adapters"),
                       Param(out_f, rank, adapter_itemsize, True, "lora_adapters")]
    grad_itemsize = DTYPE_BYTES[param_dtype] if full else adapter_itemsize

    def unit(key: int) -> Unit:
        return Unit(gpus, tuple(per_unit.get(key, ())), replicated.get(key, 0), grad_itemsize)

    layers = tuple(unit(k) for k in sorted(k for k in per_unit if k >= 0))
    return Units(unit(-1), layers)
