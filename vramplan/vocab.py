"""The training plan's vocabulary: the names each plan field takes, as plain tuples.

One owner: `vramplan.plan` builds its `Literal` types from these, and the CLI's parser takes its choices from
here, so that building the parser (and `vramplan --help`) never imports the plan record. Hugging Face's spellings of
the same things (`adamw_torch`, `bfloat16`, `all_linear`) are mapped in `vramplan.hf_names`.
"""

from __future__ import annotations

from collections.abc import Iterable

METHODS: tuple[str, ...] = ("full", "lora", "qlora")
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")
MIXED_PRECISIONS: tuple[str, ...] = ("bf16", "fp16")  # autocast dtypes (over fp32 master weights)
QUANTS: tuple[str, ...] = ("nf4", "fp4")  # bitsandbytes bnb_4bit_quant_type
QUANT_STORAGES: tuple[str, ...] = ("uint8", "bf16", "fp16", "fp32")  # bnb_4bit_quant_storage
ATTENTIONS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2")
SHARDINGS: tuple[str, ...] = ("none", "ddp", "fsdp", "fsdp_grad_op", "zero1", "zero2", "zero3")
OFFLOADS: tuple[str, ...] = ("none", "optimizer", "params")
OPTIMIZERS: tuple[str, ...] = (
    "adamw",
    "adamw_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
    "sgd_momentum",
    "lion_8bit",
)
# The training loop (vramplan/estimator/trainers.py) and TRL SFTConfig.loss_type
TRAINERS: tuple[str, ...] = ("hf", "loop", "trl-sft", "trl-dpo", "trl-orpo", "trl-kto")
LOSS_TYPES: tuple[str, ...] = ("nll", "dft")
# LoRA target shorthands; anything else is a comma list of module names (peft `target_modules`).
TARGET_SHORTHANDS: tuple[str, ...] = ("default", "attention", "all-linear")

# The documented range of every integer in a plan (the CLI's help quotes it via `range_words`; `vramplan.plan`
# validates against it): wider than any real run, narrow enough that a typo cannot make an estimate or a search
# do unbounded work.
INT_RANGES: dict[str, tuple[int, int]] = {
    "batch": (1, 65_536),  # sequences per GPU per micro-batch
    "seq": (1, 16_777_216),  # 2**24 tokens: above every released context length
    "grad_accum": (1, 1_048_576),  # HF Trainer holds every micro-batch's input ids: 16 B/token each
    "rank": (1, 65_536),  # peft takes any r; a rank above the layer's width only adds zeros
    "gpus": (1, 131_072),
    "trainable_tokens": (1, 16_777_216),  # embedding rows peft trains (trainable_token_indices)
    # PYTORCH_CUDA_ALLOC_CONF max_split_size_mb: CUDAAllocatorConfig refuses values <= kLargeBuffer (20 MiB)
    "max_split_size_mb": (21, 1_048_576),
}
# bitsandbytes `_ops.py` (quantize_4bit / dequantize_4bit): `blocksize in (32, 64, ..., 4096)`.
QUANT_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


# Which fields belong to which method. One owner: the validator below, `TrainingPlan.for_method`, the CLI's
# per-method plans (compare), the search's narrowing (suggest) and its explanations read these.
# peft LoraConfig: the adapter's fields (lora and qlora)
ADAPTER_FIELDS = ("rank", "alpha", "targets", "lora_dropout", "use_dora", "trainable_tokens", "modules_to_save")
# BitsAndBytesConfig(load_in_4bit=True) and peft prepare_model_for_kbit_training: qlora; `kbit_upcast` also
# belongs to LoRA over an LLM.int8 base (prepare_model_for_kbit_training reads `is_loaded_in_8bit` too)
QLORA_FIELDS = ("quant", "double_quant", "compute_dtype", "kbit_upcast", "quant_storage")
INT8_FIELDS = ("load_in_8bit",)  # BitsAndBytesConfig(load_in_8bit=True): a LoRA base


def fields_outside(method: str, load_in_8bit: bool = False) -> tuple[str, ...]:
    """The plan fields `method` does not take: a plan of that method leaves them at their defaults."""
    if method == "full":
        return (*ADAPTER_FIELDS, *QLORA_FIELDS, *INT8_FIELDS)
    if method == "lora":
        return tuple(f for f in QLORA_FIELDS if not (load_in_8bit and f == "kbit_upcast"))
    return INT8_FIELDS


def methods_taking(fields: Iterable[str]) -> tuple[str, ...]:
    """The methods (in METHODS order) that take every one of `fields`, e.g. ('qlora',) for quant_storage."""
    given = set(fields)
    return tuple(m for m in METHODS if not given & set(fields_outside(m, "load_in_8bit" in given)))


_FLAGS = {"double_quant": "--double-quant", "kbit_upcast": "--no-kbit-upcast", "use_dora": "--dora"}
_FULL_TRAINS = {"trainable_tokens": " (full fine-tuning trains every row)",
                "modules_to_save": " (full fine-tuning trains every module)"}


def outside_words(field: str, method: str) -> str:
    """'--quant-storage applies to method qlora only, not 'lora'' for a field `method` does not take."""
    flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
    if field in QLORA_FIELDS:
        return f"{flag} applies to method qlora only, not '{method}'"
    return f"{flag} applies to lora/qlora" + _FULL_TRAINS.get(field, f", not to method '{method}'")


def range_words(field: str) -> str:
    """'1-65536' for an integer plan field, as the CLI's help text says it."""
    lo, hi = INT_RANGES[field]
    return f"{lo}-{hi}"

# The one name of each multi-GPU engine (plan.sharding), as every report and explanation prints it: torch FSDP2
# (`fully_shard`; FSDP1 configs are estimated as FSDP2), torch DDP, DeepSpeed ZeRO stages.
ENGINE_NAMES: dict[str, str] = {
    "none": "one GPU",
    "ddp": "DDP replicas",
    "fsdp": "FSDP2 full shard",
    "fsdp_grad_op": "FSDP2, no reshard after forward",
    "zero1": "DeepSpeed ZeRO-1",
    "zero2": "DeepSpeed ZeRO-2",
    "zero3": "DeepSpeed ZeRO-3",
}
OFFLOAD_WORDS: dict[str, str] = {
    "none": "",
    "optimizer": " + optimizer offload to CPU",
    "params": " + CPU offload of parameters, gradients and states",
}


def engine_words(sharding: str, offload: str = "none") -> str:
    """'FSDP2 full shard + CPU offload of parameters, gradients and states': a (sharding, offload) pair."""
    return ENGINE_NAMES.get(sharding, sharding) + OFFLOAD_WORDS.get(offload, f" + offload {offload}")
