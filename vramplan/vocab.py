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
