"""The training plan's vocabulary: the names each plan field takes, as plain tuples.

One owner: `vramplan.plan` builds its `Literal` types from these, and the CLI's parser takes its choices from
here, so that building the parser (and `vramplan --help`) never imports pydantic. Hugging Face's spellings of
the same things (`adamw_torch`, `bfloat16`, `all_linear`) are mapped in `vramplan.hf_names`.
"""

from __future__ import annotations

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
TRAINERS: tuple[str, ...] = ("hf", "loop", "trl-sft", "trl-dpo")
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


def range_words(field: str) -> str:
    """'1-65536' for an integer plan field, as the CLI's help text says it."""
    lo, hi = INT_RANGES[field]
    return f"{lo}-{hi}"
