"""The training plan: every knob that changes how much memory a fine-tuning step takes.

A frozen record (vramplan.record): strict types, and each failed check one line raised as a `PlanError`. Defaults
that depend on the method (quantization, rank, optimizer) are filled in by `make_plan`.

Several GPUs (`gpus`, `sharding`, `offload`): `batch` is the micro-batch of *one* GPU (data parallelism: every
GPU runs its own batch). `sharding` says which engine splits the training state: `none` (one GPU), `ddp`
(torch DistributedDataParallel: full replicas), `fsdp` (torch FSDP2 `fully_shard` per decoder layer + root,
parameters resharded after forward: ZeRO-3-like), `fsdp_grad_op` (the same with `reshard_after_forward=False`:
FSDP1's SHARD_GRAD_OP, ZeRO-2-like), `zero1|zero2|zero3` (DeepSpeed ZeRO stages). Left out, it is `none` on one
GPU and `ddp` on several (what `accelerate launch` does without a config); an explicit `none` with `gpus > 1`
is an error, since nothing would split the work. `offload` moves state to host RAM: `optimizer` (DeepSpeed
ZeRO-Offload, any stage) or `params` (parameters, gradients and optimizer states: FSDP `CPUOffloadPolicy`,
DeepSpeed stage 3 `offload_param`). FSDP-QLoRA stores 4-bit weights in a float `quant_storage` dtype
(bitsandbytes `bnb_4bit_quant_storage`): FSDP1's flat parameters and ZeRO-3's partitions need one dtype (FSDP2
all-gathers mixed dtypes as bytes, so uint8 works there too; the bytes are the same). With sharded QLoRA, trl
skips peft's `prepare_model_for_kbit_training` (`SFTTrainer`: `is_sharded_qlora`), so the fp32 upcast defaults
to off.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any, Literal

from vramplan import plan_rules, vocab
from vramplan.errors import PlanError
from vramplan.plan_rules import PARAM_SHARDING, ZERO, allowed_offloads  # noqa: F401  (re-exported)
from vramplan.record import Record
from vramplan.vocab import (  # noqa: F401  (SHARDINGS, OPTIMIZERS, TRAINERS, TARGET_SHORTHANDS: re-exported)
    ATTENTIONS,
    DTYPES,
    INT_RANGES,
    LOSS_TYPES,
    METHODS,
    MIXED_PRECISIONS,
    OFFLOADS,
    OPTIMIZERS,
    QUANT_BLOCKSIZES,
    QUANT_STORAGES,
    QUANTS,
    SHARDINGS,
    TARGET_SHORTHANDS,
    TRAINERS,
    range_words,
)

# peft LoraConfig(modules_to_save=...) names vramplan models: the input embedding and the output head, spelled as
# in Llama (the plan means the model's own module of that role: GPT-NeoX's embed_in/embed_out, ...)
MODULES_TO_SAVE: tuple[str, ...] = ("embed_tokens", "lm_head")


@functools.lru_cache(maxsize=1)
def installed_transformers() -> int:
    """The installed transformers' major version (4 or 5), else 5 (not installed, or another major version).

    Read from its distribution folder on `sys.path` (`transformers-5.24.0.dist-info`), the record
    `importlib.metadata.version` reads too, without importing importlib.metadata (its email/zipfile imports were
    ~20 ms of a cold `vramplan estimate`). The first such folder wins, as `import transformers` finds the first."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("transformers-") and name.endswith((".dist-info", ".egg-info")):
                major = name[len("transformers-"):].split(".")[0]
                return int(major) if major in ("4", "5") else 5
    return 5


# The names each field takes are owned by vramplan.vocab (plain tuples, so the CLI parser needs no plan record).
Method = Literal[METHODS]  # type: ignore[valid-type]
Dtype = Literal[DTYPES]  # type: ignore[valid-type]
MixedPrecision = Literal[MIXED_PRECISIONS]  # type: ignore[valid-type]
Quant = Literal[QUANTS]  # type: ignore[valid-type]
Attn = Literal[ATTENTIONS]  # type: ignore[valid-type]
Sharding = Literal[SHARDINGS]  # type: ignore[valid-type]
Offload = Literal[OFFLOADS]  # type: ignore[valid-type]
QuantStorage = Literal[QUANT_STORAGES]  # type: ignore[valid-type]
# The loop that runs the step: HF Trainer (outputs dropped before backward), a custom/accelerate loop (outputs kept
# through backward), TRL's SFTTrainer (fused LM head, no full logits). Owner: vramplan/estimator/trainers.py.
Trainer = Literal[TRAINERS]  # type: ignore[valid-type]
LossType = Literal[LOSS_TYPES]  # type: ignore[valid-type]  # TRL 1.16 SFTConfig.loss_type

Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]

class TrainingPlan(Record):
    """One fine-tuning configuration. Sizes are counts; dtypes are 'bf16' | 'fp16' | 'fp32'."""

    error = PlanError

    method: Method = "qlora"
    param_dtype: Dtype = "bf16"
    mixed_precision: MixedPrecision | None = None
    # QLoRA (bitsandbytes BitsAndBytesConfig)
    quant: Quant | None = None
    quant_blocksize: int = 64
    double_quant: bool | None = None  # qlora: default on; None for other methods (see `_qlora_defaults`)
    compute_dtype: Dtype | None = None
    kbit_upcast: bool | None = None  # qlora: default on, off for param-sharded QLoRA; None for other methods
    # LLM.int8 base (BitsAndBytesConfig(load_in_8bit=True), lora only): bitsandbytes `Linear8bitLt` linears
    load_in_8bit: bool = False
    # LoRA (peft LoraConfig)
    rank: int | None = None
    alpha: float | None = None
    targets: str | None = None
    lora_dropout: float = 0.0
    use_dora: bool = False  # LoraConfig(use_dora=True): a magnitude vector per wrapped linear
    trainable_tokens: int | None = None  # LoraConfig(trainable_token_indices=...): that many embedding rows
    # LoraConfig(modules_to_save=...): a trainable full copy of the input embedding and/or the output head
    # ("embed_tokens", "lm_head": whatever the architecture names them), estimator/weights.py: saved_tensors
    modules_to_save: str | None = None
    # Data
    batch: int = 1
    seq: int = 1024
    grad_accum: int = 1
    # Recompute and kernels
    grad_ckpt: bool = True
    ckpt_reentrant: bool | None = None  # default: reentrant under transformers 4 (see `_defaults`)
    attn: Attn = "sdpa"
    optimizer: Optimizer | None = None
    # Several GPUs (data parallel; `batch` is per GPU)
    gpus: int = 1
    sharding: Sharding | None = None  # None: 'none' on one GPU, 'ddp' on several (see `parallelism`)
    offload: Offload = "none"
    quant_storage: QuantStorage | None = None  # qlora: packed 4-bit storage dtype (see `storage_dtype`)
    # The training loop and its loss (vramplan/estimator/trainers.py)
    trainer: Trainer = "hf"
    loss_type: LossType | None = None  # trl-sft: default 'nll' (TRL 1.16 SFTConfig); None for other trainers
    # Evaluation (vramplan/estimator/evaluation.py): per_device_eval_batch_size; None: no eval phase
    eval_batch: int | None = None
    eval_accumulation_steps: int | None = None
    prediction_loss_only: bool = True  # Trainer.evaluate passes True when no compute_metrics is given
    # trl-dpo (DPOConfig.precompute_ref_log_probs): reference log-probs computed before training, no reference pass
    precompute_ref_log_probs: bool = False
    # trl-sft (SFTConfig packing=True, packing_strategy 'bfd', which turns padding_free on): each micro-batch is one
    # row of batch x seq tokens with position_ids and no attention_mask (vramplan/estimator/trainers.py)
    packing: bool = False
    # transformers/TRL `use_liger_kernel=True`: Liger's RMSNorm, SwiGLU, RoPE and (outside TRL) fused linear
    # cross-entropy for the model types Liger patches (vramplan/estimator/liger.py)
    liger: bool = False
    # TRL `activation_offloading=True` (trl-* trainers): saved activations copied to pinned host memory
    # (vramplan/estimator/offloading.py)
    activation_offloading: bool = False
    # PYTORCH_CUDA_ALLOC_CONF knobs of the caching allocator (reserved memory: vramplan/estimator/allocator.py)
    expandable_segments: bool = False
    max_split_size_mb: int | None = None  # None: unlimited (torch's default)
    # The transformers major version the run uses (default: the installed one, else 5): `_defaults`
    transformers: Literal[4, 5] | None = None

    def _defaults(self) -> None:
        """`transformers` defaults to the installed major version (read from the package metadata, never by
        importing it), else 5. Its checkpointing default: transformers 4.57 `gradient_checkpointing_enable` takes
        `{"use_reentrant": True}` when given no kwargs (peft's `prepare_model_for_kbit_training` passes `{}`:
        torch's own default, reentrant too); 5.x `_activation_checkpointing_enable` takes
        `{"use_reentrant": False}`, what HF Trainer's call leaves in effect.

        QLoRA's booleans get their defaults here, so that only a qlora plan carries them and a plan's dump
        (`estimate --json`) builds the same plan again. kbit upcast: an 8-bit base goes through the same
        preparation (peft: loaded_in_kbit); trl's SFTTrainer skips `prepare_model_for_kbit_training` when the 4-bit
        weights are sharded (FSDP-QLoRA), and TRL 1.16's SFT/DPO/KTO trainers never call it (they cast the
        adapters to bf16)."""
        if self.transformers is None:
            self._set("transformers", installed_transformers())
        if self.ckpt_reentrant is None:
            self._set("ckpt_reentrant", self.transformers == 4 and self.grad_ckpt)
        if not (self.method == "qlora" or (self.method == "lora" and self.load_in_8bit)):
            return
        if self.double_quant is None and self.method == "qlora":
            self._set("double_quant", True)
        if self.kbit_upcast is None:
            self._set("kbit_upcast", self.sharding not in PARAM_SHARDING
                      and self.trainer not in ("trl-sft", "trl-dpo", "trl-kto"))

    def _validate(self) -> None:
        self._check_values()
        plan_rules.check_trainer(self)
        self._check_method_fields()
        if self.modules_to_save and (self.parallelism != "none" or self.offload != "none"):
            raise ValueError("--modules-to-save on several GPUs or with offload is not modelled yet (that "
                             "composition keeps one dtype for every trainable tensor)")
        plan_rules.check_8bit(self)
        if self.mixed_precision and self.param_dtype != "fp32":
            raise ValueError("--mixed-precision needs --param-dtype fp32 (fp32 master weights)")
        if self.method == "qlora" and self.param_dtype == "fp32" and self.mixed_precision:
            raise ValueError("qlora keeps 4-bit base weights; use --param-dtype bf16/fp16 instead of mixed precision")
        if self.ckpt_reentrant and not self.grad_ckpt:
            raise ValueError("--ckpt-reentrant needs gradient checkpointing on")
        plan_rules.check_parallel(self)

    def _check_values(self) -> None:
        """One field at a time: counts within INT_RANGES, bitsandbytes' block sizes, a dropout probability, a
        finite positive alpha (peft scales the adapter by alpha / r; 0 would train nothing), and the module lists
        (normalized: stripped, modules_to_save sorted)."""
        for field, (lo, hi) in INT_RANGES.items():
            v = getattr(self, field)
            if v is not None and not lo <= v <= hi:
                raise ValueError(f"{field}: {v} is out of range: give an integer from {lo} to {hi}")
        if self.quant_blocksize not in QUANT_BLOCKSIZES:
            raise ValueError(f"quant_blocksize: {self.quant_blocksize}: bitsandbytes takes one of "
                             f"{', '.join(map(str, QUANT_BLOCKSIZES))}")
        if not 0.0 <= self.lora_dropout < 1.0:  # nan fails both comparisons
            raise ValueError(f"lora_dropout: {self.lora_dropout:g} is out of range: give a probability in [0, 1)")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha: {self.alpha:g} is out of range: give a finite number above 0 (peft's default "
                             f"is {LORA_ALPHA_DEFAULT})")
        if self.targets is not None:
            names = [t.strip() for t in self.targets.split(",") if t.strip()]
            if not names:
                raise ValueError("targets: give 'default', 'attention', 'all-linear' or a comma list of module names")
            self._set("targets", ",".join(names))
        if self.modules_to_save is not None:
            names = sorted({t.strip() for t in self.modules_to_save.split(",") if t.strip()})
            bad = [n for n in names if n not in MODULES_TO_SAVE]
            if not names or bad:
                raise ValueError(f"modules_to_save: {', '.join(bad) or 'nothing'}: give a comma list of "
                                 f"{', '.join(MODULES_TO_SAVE)}")
            self._set("modules_to_save", ",".join(names))

    def _check_method_fields(self) -> None:
        """A field the method does not take (`fields_outside`) left at its default; `load_in_8bit` is
        `_check_8bit`'s, which says why."""
        for field in vocab.fields_outside(self.method, self.load_in_8bit):
            if field not in vocab.INT8_FIELDS and getattr(self, field) != type(self).default_of(field):
                raise ValueError(vocab.outside_words(field, self.method))

    def for_method(self, method: str, **changes: Any) -> TrainingPlan:
        """This plan as `method` (with `changes`): the fields `method` does not take go back to their defaults,
        and `make_plan` fills the new method's own (rank, quantization, optimizer when unset)."""
        fields = {**self.to_dict(), **changes, "method": method}
        fields.update(dict.fromkeys(vocab.fields_outside(method, bool(fields.get("load_in_8bit")))))
        return make_plan(**fields)

    # Resolved views -------------------------------------------------------------------------------------
    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def kbit(self) -> bool:
        """A quantized base (4-bit QLoRA or an 8-bit LoRA base): peft's `prepare_model_for_kbit_training` applies."""
        return self.method == "qlora" or self.load_in_8bit

    @property
    def parallelism(self) -> str:
        """The sharding mode in effect: `sharding`, or its default for the number of GPUs."""
        if self.sharding is not None:
            return self.sharding
        return "none" if self.gpus == 1 else "ddp"

    @property
    def storage_dtype(self) -> str:
        """qlora: the dtype packed 4-bit weights are stored in (`quant_storage`, else the param dtype when the
        engine shards parameters, else bitsandbytes' default uint8)."""
        if self.quant_storage is not None:
            return self.quant_storage
        return self.param_dtype if self.parallelism in PARAM_SHARDING else "uint8"

    @property
    def multi_gpu(self) -> bool:
        """Whether the estimate is per GPU of a data-parallel job (anything but one plain GPU)."""
        return self.parallelism != "none"

    @property
    def activation_dtype(self) -> str:
        """The dtype activations flow in: the autocast dtype, else the compute dtype, else the weights'."""
        if self.mixed_precision:
            return self.mixed_precision
        if self.method == "qlora":
            return self.compute_dtype or self.param_dtype
        return self.param_dtype


LORA_ALPHA_DEFAULT = 8  # peft 0.21 `LoraConfig.lora_alpha` default (tests/test_cli_flags.py reads it from peft)


def default_optimizer(method: str) -> str:
    return "paged_adamw_8bit" if method == "qlora" else "adamw"


def make_plan(**options: object) -> TrainingPlan:
    """Validate options (None means 'use the default') and fill the method-dependent defaults."""
    plan = TrainingPlan.from_dict({k: v for k, v in options.items() if v is not None})
    fills: dict[str, object] = {}
    if plan.optimizer is None:
        fills["optimizer"] = default_optimizer(plan.method)
    if plan.uses_lora:
        if plan.rank is None:
            fills["rank"] = 8
        if plan.alpha is None:  # peft LoraConfig.lora_alpha's default (peft 0.21: 8, whatever r is)
            fills["alpha"] = float(LORA_ALPHA_DEFAULT)
        if plan.targets is None:
            fills["targets"] = "default"
    if plan.trainer == "trl-sft" and plan.loss_type is None:
        fills["loss_type"] = "nll"
    if plan.method == "qlora":
        if plan.quant is None:
            fills["quant"] = "nf4"
        if plan.compute_dtype is None:
            fills["compute_dtype"] = plan.param_dtype
    return plan.replace(**fills)
