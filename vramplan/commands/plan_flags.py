"""The training-plan flags every planning command shares (estimate, compare, suggest, calibrate), in one list.

A flag's default is None, meaning "the plan's default": that is how `plan_from_args` tells a given flag from an
absent one. The parser imports nothing heavy (no plan record): `vramplan --help` stays fast; the plan record is
built only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

# --gpu-dir is defined in parsing (the `gpus` listing needs only it, and parsing imports nothing heavy); used here too
from vramplan.commands.parsing import add_gpu_dir_argument, gpu_dirs
from vramplan.hf_names import (
    attention_from_hf,
    bool_from_hf,
    dtype_from_hf,
    optimizer_from_hf,
    storage_dtype_from_hf,
    targets_from_hf,
)
from vramplan.vocab import (
    ATTENTIONS,
    LOSS_TYPES,
    METHODS,
    MIXED_PRECISIONS,
    OFFLOADS,
    OPTIMIZERS,
    QUANTS,
    SHARDINGS,
    TRAINERS,
    range_words,
)


def console(args: argparse.Namespace | None = None) -> Any:
    """A rich Console: the terminal's width, or 120 columns when piped (so tables are not truncated)."""
    import os

    from rich.console import Console

    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=120)
    return out


def add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    """`--gpu` (optional: adds the CUDA context and allocator reserve, and a verdict) and `--gpu-dir`."""
    p.add_argument("--gpu", help="GPU profile (e.g. rtx4090, a100-80gb): adds CUDA context + allocator reserve")
    add_gpu_dir_argument(p)


def _hf(convert: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a `vramplan.hf_names` converter: its InputError becomes argparse's one-line error."""
    def parse(text: str) -> object:
        from vramplan.errors import InputError

        try:
            return convert(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _bool_flag(g: argparse._ArgumentGroup, flag: str, dest: str, help: str) -> None:
    """An HfArgumentParser-style boolean: `--flag` (true), `--flag false`, and `--no-flag`."""
    g.add_argument(flag, dest=dest, nargs="?", const=True, default=None, type=_hf(bool_from_hf), metavar="BOOL",
                   help=help)
    g.add_argument("--no-" + flag[2:], dest=dest, action="store_const", const=False, help=argparse.SUPPRESS)


def add_plan_arguments(p: argparse.ArgumentParser, method_default: bool = True) -> None:
    """The training-plan flags shared by estimate, compare, suggest and calibrate (None = plan default).

    Hugging Face's spellings (TrainingArguments, LoraConfig, BitsAndBytesConfig) are aliases of the same flag:
    one `dest`, one converter from `vramplan.hf_names`; `--foo_bar` is read as `--foo-bar` (see `cli.main`).
    """
    g = p.add_argument_group("training plan (Hugging Face / TRL spellings are aliases; --foo_bar reads as --foo-bar)")
    if method_default:
        g.add_argument("--method", choices=METHODS, help="fine-tuning method (default qlora)")
        for flag, what in (("--use-peft", "LoRA adapters"), ("--load-in-4bit", "a 4-bit base")):
            g.add_argument(flag, dest="trl_" + flag[2:].replace("-", "_"), nargs="?", const=True, default=None,
                           type=_hf(bool_from_hf), metavar="BOOL", help=f"TRL ModelConfig: {what} (--use-peft = "
                           "--method lora, with --load-in-4bit = qlora, neither = full)")
    _add_precision_flags(g)
    _add_adapter_flags(g)
    _add_step_flags(g)
    _add_engine_flags(g, p)
    _add_trainer_flags(g)
    a = p.add_argument_group("caching allocator (PYTORCH_CUDA_ALLOC_CONF)")
    a.add_argument("--expandable-segments", action="store_const", const=True, default=None,
                   help="expandable_segments:True (reserved grows by pages of one segment)")
    a.add_argument("--max-split-size-mb", type=int, metavar="MB",
                   help="max_split_size_mb: blocks this large are never split (default unlimited)")
    c = p.add_argument_group("training config files")
    c.add_argument("--config", action="append", metavar="FILE", help="read the plan (and the model) from a "
                   "training config: axolotl, LLaMA-Factory, TRL, TrainingArguments JSON, adapter_config.json, "
                   "BitsAndBytesConfig, accelerate, DeepSpeed (repeatable: files read together); flags override it")
    c.add_argument("--config-format", metavar="FORMAT", help="the --config file's format when detection is not "
                   "enough: axolotl, llamafactory, trl, hf, peft, bnb, accelerate, deepspeed")
    late = {}
    if "--gpus" in p._option_string_actions:  # the command's own --gpus default applies after the config's
        action = p._option_string_actions["--gpus"]
        late["gpus"], action.default = action.default, None
    p.set_defaults(plan_flags=True, late_defaults=late)


def _add_precision_flags(g: argparse._ArgumentGroup) -> None:
    """Weight, autocast and quantization dtypes (TrainingArguments, BitsAndBytesConfig)."""
    dtypes = "{bf16,fp16,fp32}"
    g.add_argument("--param-dtype", "--dtype", "--torch-dtype", type=_hf(dtype_from_hf), metavar=dtypes,
                   help="base weight dtype, also bfloat16/float16/float32 (default bf16)")
    g.add_argument("--mixed-precision", type=_hf(partial(dtype_from_hf, allowed=MIXED_PRECISIONS)),
                   metavar="{bf16,fp16}", help="autocast dtype (with --param-dtype fp32)")
    for dtype in MIXED_PRECISIONS:
        g.add_argument(f"--{dtype}", dest=f"hf_{dtype}", nargs="?", const=True, default=None, type=_hf(bool_from_hf),
                       metavar="BOOL", help=f"TrainingArguments {dtype}: autocast to {dtype} over fp32 weights "
                       f"(with --param-dtype fp32), else {dtype} weights")
    g.add_argument("--quant", "--bnb-4bit-quant-type", choices=QUANTS, help="4-bit type for qlora (default nf4)")
    g.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=None,
                   help="quantize the quantization constants (qlora; default on)")
    _bool_flag(g, "--bnb-4bit-use-double-quant", "double_quant", "= --double-quant")
    _bool_flag(g, "--use-bnb-nested-quant", "double_quant", "= --double-quant (TRL ModelConfig)")
    g.add_argument("--compute-dtype", "--bnb-4bit-compute-dtype", type=_hf(dtype_from_hf), metavar=dtypes,
                   help="bnb_4bit_compute_dtype (qlora; default the param dtype)")
    g.add_argument("--quant-storage", "--bnb-4bit-quant-storage", type=_hf(storage_dtype_from_hf),
                   metavar="{uint8,bf16,fp16,fp32}", help="qlora: dtype packed 4-bit weights are stored in "
                   "(bnb_4bit_quant_storage; FSDP/ZeRO-3 need a float one, the default there)")
    _bool_flag(g, "--load-in-8bit", "load_in_8bit", "LoRA over an LLM.int8 base (BitsAndBytesConfig load_in_8bit: "
               "bitsandbytes Linear8bitLt, int8 weights + fp32 row scales; --method lora)")
    g.add_argument("--no-kbit-upcast", dest="kbit_upcast", action="store_const", const=False, default=None,
                   help="skip peft prepare_model_for_kbit_training's fp32 upcast of the weights it did not quantize")


def _add_adapter_flags(g: argparse._ArgumentGroup) -> None:
    """LoRA and its peft options (LoraConfig), and the transformers major version."""
    g.add_argument("--rank", "--lora-r", "--r", dest="rank", type=int,
                   help=f"LoRA rank, {range_words('rank')} (default 8, as peft)")
    g.add_argument("--alpha", "--lora-alpha", dest="alpha", type=float,
                   help="LoRA alpha, a finite number above 0 (default 8, as peft)")
    g.add_argument("--targets", "--target-modules", "--lora-target-modules", dest="targets", nargs="+",
                   metavar="TARGETS",
                   help="LoRA targets: default | attention | all-linear (all_linear) | module names, comma or "
                   "space separated (q_proj,v_proj)")
    g.add_argument("--lora-dropout", type=float, help="LoRA dropout probability, in [0, 1) (default 0)")
    _bool_flag(g, "--use-dora", "use_dora", "DoRA (LoraConfig use_dora): a magnitude vector per adapted linear and "
               "an fp32 weight norm of each adapted weight every forward (--dora is the same)")
    _bool_flag(g, "--dora", "use_dora", "= --use-dora")
    g.add_argument("--trainable-tokens", dest="trainable_tokens", type=int, metavar="N",
                   help="peft trainable_token_indices: train N embedding rows (e.g. added tokens) besides LoRA")
    g.add_argument("--transformers", dest="transformers", type=int, choices=(4, 5),
                   help="the transformers major version the run uses (default: the installed one, else 5): 4.x "
                   "checkpoints reentrant by default and keeps MoE experts as nn.Linear")
    g.add_argument("--modules-to-save", dest="modules_to_save", metavar="NAMES",
                   help="peft modules_to_save: a trainable full copy of embed_tokens and/or lm_head "
                   "(comma list; the model's own input embedding / output head)")


def _add_step_flags(g: argparse._ArgumentGroup) -> None:
    """The step's shape: micro-batch, sequence, accumulation, recompute, attention, optimizer."""
    g.add_argument("--batch", "--per-device-train-batch-size", dest="batch", type=int,
                   help=f"micro-batch size per GPU, {range_words('batch')} (default 1)")
    g.add_argument("--seq", "--max-seq-length", "--max-length", dest="seq", type=int,
                   help=f"sequence length in tokens, {range_words('seq')} (default 1024; beyond the "
                   "model's context: a warning)")
    g.add_argument("--grad-accum", "--gradient-accumulation-steps", dest="grad_accum", type=int,
                   help=f"gradient accumulation steps, {range_words('grad_accum')} (default 1)")
    g.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing (default on)")
    _bool_flag(g, "--gradient-checkpointing", "grad_ckpt", "= --grad-ckpt")
    g.add_argument("--ckpt-reentrant", action="store_const", const=True, default=None,
                   help="use the older reentrant checkpointing (the default under --transformers 4)")
    g.add_argument("--no-ckpt-reentrant", dest="ckpt_reentrant", action="store_const", const=False,
                   help="non-reentrant checkpointing (the default under --transformers 5)")
    g.add_argument("--attn", "--attn-implementation", dest="attn", type=_hf(attention_from_hf),
                   metavar="{" + ",".join(ATTENTIONS) + "}", help="attention (default sdpa)")
    g.add_argument("--optimizer", "--optim", dest="optimizer", type=_hf(optimizer_from_hf), metavar="OPTIMIZER",
                   help=f"{', '.join(OPTIMIZERS)}, or a transformers `optim` name (adamw_torch, adamw_bnb_8bit, "
                   "...) (default paged_adamw_8bit for qlora, adamw otherwise)")


def _add_engine_flags(g: argparse._ArgumentGroup, p: argparse.ArgumentParser) -> None:
    """Several GPUs: their count (unless the command has its own --gpus), sharding, offload."""
    if "--gpus" not in p._option_string_actions:  # a command may define --gpus itself (suggest)
        g.add_argument("--gpus", type=int, help=f"GPUs of a data-parallel job, {range_words('gpus')} (default 1); "
                       "sizes are then per GPU and --batch is each GPU's micro-batch")
    g.add_argument("--sharding", choices=SHARDINGS, help="ddp | fsdp (FSDP2, ZeRO-3-like) | fsdp_grad_op "
                   "(ZeRO-2-like) | zero1/zero2/zero3 (DeepSpeed) (default: none on one GPU, ddp on several)")
    g.add_argument("--offload", choices=OFFLOADS,
                   help="state in host RAM: optimizer (DeepSpeed ZeRO-Offload) or params (+ grads + optimizer: "
                   "FSDP CPU offload, ZeRO-3)")


def _add_trainer_flags(g: argparse._ArgumentGroup) -> None:
    """The training loop (Trainer, custom loop, TRL) and its evaluation step."""
    g.add_argument("--trainer", choices=TRAINERS,
                   help="the training loop: hf (transformers Trainer, default), loop (a custom or accelerate loop "
                   "that keeps `outputs`), trl-sft (TRL SFTTrainer: fused LM head, no full logits), trl-dpo, "
                   "trl-orpo")
    g.add_argument("--packing", action="store_const", const=True, default=None,
                   help="trl-sft: SFTConfig packing=True ('bfd', padding-free): one row of batch x seq tokens")
    g.add_argument("--liger", "--use-liger-kernel", dest="liger", action="store_const", const=True, default=None,
                   help="Liger kernels (use_liger_kernel): RMSNorm, SwiGLU, RoPE, and outside TRL the fused linear "
                   "cross-entropy (no logits), for the model types Liger patches")
    g.add_argument("--activation-offloading", action="store_const", const=True, default=None,
                   help="trl-sft/trl-dpo: TRL activation_offloading=True (saved activations copied to pinned host "
                   "memory; the estimate notes the host RAM it needs)")
    g.add_argument("--loss-type", choices=LOSS_TYPES, help="trl-sft loss (SFTConfig.loss_type): nll (default) | dft")
    g.add_argument("--precompute-ref-log-probs", action="store_const", const=True, default=None,
                   help="trl-dpo, trl-kto: reference log-probs computed before training (no reference pass or model)")
    g.add_argument("--eval-batch", "--per-device-eval-batch-size", dest="eval_batch", type=int,
                   help="add the eval step as a phase (Trainer.evaluate, per_device_eval_batch_size)")
    g.add_argument("--eval-accumulation-steps", type=int,
                   help="eval steps whose logits stay on the GPU before moving to the host")
    g.add_argument("--prediction-loss-only", action=argparse.BooleanOptionalAction, default=None,
                   help="eval returns the loss only (default: Trainer does so without compute_metrics); "
                   "--no-prediction-loss-only keeps the logits")


def finish_plan_args(args: argparse.Namespace) -> None:
    """After parsing: HF spellings that are more than a rename become plan fields (`--bf16`, a target list),
    then the --config file's options fill every plan field no flag gave (a flag's default is None)."""
    _hf_precision(args)
    _trl_method(args)
    if getattr(args, "config", None):
        _apply_config(args)
    elif getattr(args, "config_format", None):
        from vramplan.errors import InputError

        raise InputError("--config-format applies to a --config file: give one")
    _trl_defaults(args)
    if getattr(args, "targets", None) is not None and not isinstance(args.targets, str):  # a list, flag or file
        args.targets = targets_from_hf(args.targets)
    for field, default in getattr(args, "late_defaults", {}).items():
        if getattr(args, field, None) is None:
            setattr(args, field, default)
    if getattr(args, "model", "") is None:
        from vramplan.errors import InputError

        raise InputError("--model is required (a preset, config.json, model folder or hub id), or a --config "
                         "that names the model")


def _apply_config(args: argparse.Namespace) -> None:
    """`vramplan.configs.read_config`: its model and plan options where the command line gave none; its notes
    and the fields it ignored go to stderr (stdout stays the answer, --json parseable)."""
    from vramplan.configs import read_config
    from vramplan.errors import InputError

    if args.config_format and len(args.config) > 1:
        raise InputError("--config-format applies to one --config file; several are each detected")
    reading = read_config(args.config[0] if len(args.config) == 1 else args.config, args.config_format)
    for field, value in reading.plan_options.items():
        if getattr(args, field, None) is None:
            setattr(args, field, value)
    if getattr(args, "model", "") is None:
        args.model = reading.model
    where = f"vramplan {args.command}: {reading.source}"
    for note in reading.notes:
        print(f"{where}: note: {note}", file=sys.stderr)
    if reading.ignored:
        shown = ", ".join(reading.ignored[:8]) + (f" and {len(reading.ignored) - 8} more" if len(reading.ignored) > 8
                                                 else "")
        print(f"{where}: ignored (no effect on memory): {shown}", file=sys.stderr)


def _trl_method(args: argparse.Namespace) -> None:
    """TRL's `use_peft` / `load_in_4bit` (trl ModelConfig, `get_peft_config` / `get_quantization_config`) name
    the method: adapters on a 4-bit base are QLoRA, adapters alone LoRA, neither full fine-tuning."""
    from vramplan.errors import InputError

    peft, four_bit = getattr(args, "trl_use_peft", None), getattr(args, "trl_load_in_4bit", None)
    if peft is None and four_bit is None:
        return
    if four_bit and not peft:
        raise InputError("--load-in-4bit without --use-peft: a 4-bit base trains only through adapters (QLoRA)")
    method = "qlora" if four_bit else "lora" if peft else "full"
    if args.method not in (None, method):
        raise InputError(f"--use-peft/--load-in-4bit say {method}, --method says {args.method}: give one")
    args.method = method


# trl ModelConfig's own defaults (trl 1.16 `trainer/model_config.py`), which `get_peft_config` and
# `get_quantization_config` pass to LoraConfig / BitsAndBytesConfig: they, not peft's, apply to a `trl sft --use_peft`
# run (r 16, not peft's 8; no nested quantization, where vramplan's QLoRA default has it).
TRL_LORA_DEFAULTS = {"rank": 16, "alpha": 32.0, "lora_dropout": 0.05}
TRL_4BIT_DEFAULTS = {"double_quant": False}


def _trl_defaults(args: argparse.Namespace) -> None:
    """After the config file: fields still unset take TRL's defaults when TRL's flags chose the method."""
    if getattr(args, "trl_use_peft", None) is None and getattr(args, "trl_load_in_4bit", None) is None:
        return
    fills = {**(TRL_LORA_DEFAULTS if args.method in ("lora", "qlora") else {}),
             **(TRL_4BIT_DEFAULTS if args.method == "qlora" else {})}
    for field, value in fills.items():
        if getattr(args, field, None) is None:
            setattr(args, field, value)


def _hf_precision(args: argparse.Namespace) -> None:
    """TrainingArguments `bf16`/`fp16` turn on autocast (accelerate mixed_precision). Over fp32 weights that is
    the plan's `mixed_precision`; over weights already loaded in that dtype (transformers 5 loads a checkpoint's
    own dtype: `from_pretrained(dtype="auto")`) autocast changes no byte, so it names the weights' dtype."""
    from vramplan.errors import InputError

    chosen = [d for d in MIXED_PRECISIONS if getattr(args, f"hf_{d}", None)]
    if len(chosen) > 1:
        raise InputError("--bf16 and --fp16 both given: choose one")
    if not chosen:
        return
    dtype, weights = chosen[0], args.param_dtype
    if weights == "fp32":
        if args.mixed_precision not in (None, dtype):
            raise InputError(f"--{dtype} with --mixed-precision {args.mixed_precision}: choose one")
        args.mixed_precision = dtype
    elif weights in (None, dtype):
        args.param_dtype = dtype
    else:
        raise InputError(f"--{dtype} over {weights} weights (autocast between two 16-bit dtypes) is not modelled: "
                         f"use --param-dtype {dtype}, or fp32 for mixed precision")


def plan_from_args(args: argparse.Namespace, **override: object):
    """The plan the flags describe: every `TrainingPlan` field read from `args` (None = default), then `override`."""
    from vramplan.plan import TrainingPlan, make_plan

    options = {f: getattr(args, f, None) for f in TrainingPlan.field_names()}
    options.update(override)
    options.update(_gpu_dtypes(args, options))
    return make_plan(**options)


def _gpu_dtypes(args: argparse.Namespace, options: dict) -> dict:
    """With `--gpu` and no dtype flag, the GPU's own default dtypes (`hardware.default_dtypes`: fp16 on cards
    without bf16, e.g. a T4), so the plain command prices the run such a card runs instead of refusing bf16."""
    if not getattr(args, "gpu", None) or any(options.get(k) is not None for k in _DTYPE_FIELDS):
        return {}
    from vramplan.hardware import default_dtypes, resolve_gpu
    from vramplan.plan import TrainingPlan

    method = options.get("method") or TrainingPlan.default_of("method")
    return default_dtypes(resolve_gpu(args.gpu, gpu_dirs(args)), method)


_DTYPE_FIELDS = ("param_dtype", "mixed_precision", "compute_dtype")


def method_plan(args: argparse.Namespace, method: str):
    """The shared flags applied to one method (compare); options that do not apply to it are left out."""
    from vramplan.vocab import fields_outside

    drop = fields_outside(method, bool(getattr(args, "load_in_8bit", None)))
    return plan_from_args(args, method=method, **dict.fromkeys(drop))
