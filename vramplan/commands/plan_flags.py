"""The training-plan flags every planning command shares (estimate, compare, suggest, calibrate), in one list.

A flag's default is None, meaning "the plan's default": that is how `plan_from_args` tells a given flag from an
absent one. The parser imports nothing heavy (no pydantic): `vramplan --help` stays fast; the plan model is
built only when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def console(args: argparse.Namespace | None = None) -> Any:
    """A rich Console: the terminal's width, or 120 columns when piped (so tables are not truncated)."""
    import os

    from rich.console import Console

    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=120)
    return out


def gpu_dirs(args: argparse.Namespace) -> tuple[Path, ...]:
    """The `--gpu-dir` folders given (extra GPU profile folders)."""
    return tuple(Path(p) for p in (getattr(args, "gpu_dir", None) or []))


def add_gpu_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-dir", action="append", metavar="DIR",
                   help="extra folder of GPU profile .toml files (repeatable; also $VRAMPLAN_GPU_DIR)")


def add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    """`--gpu` (optional: adds the CUDA context and allocator reserve, and a verdict) and `--gpu-dir`."""
    p.add_argument("--gpu", help="GPU profile (e.g. rtx4090, a100-80gb): adds CUDA context + allocator reserve")
    add_gpu_dir_argument(p)


def add_plan_arguments(p: argparse.ArgumentParser, method_default: bool = True) -> None:
    """The training-plan flags shared by estimate, compare, suggest and calibrate (None = plan default)."""
    from vramplan.vocab import ATTENTIONS, OFFLOADS, OPTIMIZERS, SHARDINGS

    g = p.add_argument_group("training plan")
    if method_default:
        g.add_argument("--method", choices=["full", "lora", "qlora"], help="fine-tuning method (default qlora)")
    g.add_argument("--param-dtype", choices=["bf16", "fp16", "fp32"], help="base weight dtype (default bf16)")
    g.add_argument("--mixed-precision", choices=["bf16", "fp16"], help="autocast dtype (with --param-dtype fp32)")
    g.add_argument("--quant", choices=["nf4", "fp4"], help="4-bit type for qlora (default nf4)")
    g.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=None,
                   help="quantize the quantization constants (qlora; default on)")
    g.add_argument("--compute-dtype", choices=["bf16", "fp16", "fp32"], help="bnb_4bit_compute_dtype (qlora)")
    g.add_argument("--no-kbit-upcast", dest="kbit_upcast", action="store_const", const=False, default=None,
                   help="skip peft prepare_model_for_kbit_training's fp32 upcast of non-4-bit weights")
    g.add_argument("--rank", type=int, help="LoRA rank (default 8)")
    g.add_argument("--alpha", type=float, help="LoRA alpha (default 2 x rank)")
    g.add_argument("--targets", help="LoRA targets: default | attention | all-linear | a comma list (q_proj,v_proj)")
    g.add_argument("--lora-dropout", type=float, help="LoRA dropout probability (default 0)")
    g.add_argument("--batch", type=int, help="micro-batch size (default 1)")
    g.add_argument("--seq", type=int, help="sequence length in tokens (default 1024)")
    g.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    g.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing (default on)")
    g.add_argument("--ckpt-reentrant", action="store_const", const=True, default=None,
                   help="use the older reentrant checkpointing")
    g.add_argument("--attn", choices=ATTENTIONS, help="attention (default sdpa)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="default paged_adamw_8bit for qlora, adamw otherwise")
    if "--gpus" not in p._option_string_actions:  # a command may define --gpus itself (suggest)
        g.add_argument("--gpus", type=int, help="GPUs of a data-parallel job (default 1); sizes are then per GPU "
                       "and --batch is each GPU's micro-batch")
    g.add_argument("--sharding", choices=SHARDINGS, help="ddp | fsdp (FSDP2, ZeRO-3-like) | fsdp_grad_op "
                   "(ZeRO-2-like) | zero1/zero2/zero3 (DeepSpeed) (default: none on one GPU, ddp on several)")
    g.add_argument("--offload", choices=OFFLOADS,
                   help="state in host RAM: optimizer (DeepSpeed ZeRO-Offload) or params (+ grads + optimizer: "
                   "FSDP CPU offload, ZeRO-3)")
    g.add_argument("--quant-storage", choices=["uint8", "bf16", "fp16", "fp32"],
                   help="qlora: dtype packed 4-bit weights are stored in (bnb_4bit_quant_storage; "
                   "FSDP/ZeRO-3 need a float one, the default there)")


def plan_from_args(args: argparse.Namespace, **override: object):
    """The plan the flags describe: every `TrainingPlan` field read from `args` (None = default), then `override`."""
    from vramplan.plan import TrainingPlan, make_plan

    options = {f: getattr(args, f, None) for f in TrainingPlan.model_fields}
    options.update(override)
    return make_plan(**options)


def method_plan(args: argparse.Namespace, method: str):
    """The shared flags applied to one method (compare); options that do not apply to it are left out."""
    from vramplan.advisor import LORA_ONLY, QLORA_ONLY

    qlora_only = (*QLORA_ONLY, "quant_storage")
    drop = (LORA_ONLY + qlora_only) if method == "full" else qlora_only if method == "lora" else ()
    return plan_from_args(args, method=method, **dict.fromkeys(drop))
