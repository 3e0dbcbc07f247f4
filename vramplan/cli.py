"""The command line: argparse parsers and `run_*` functions; all rendering lives in `vramplan.report`.

Every `VramplanError` (and every argparse error) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vramplan.commands.calibrate import add_calibrate_parser, add_calibrations_parser
from vramplan.commands.suggest import add_suggest_parser
from vramplan.errors import VramplanError
from vramplan.plan import OPTIMIZERS, SHARDINGS


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`vramplan estimate: error: ...`) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _console(args: argparse.Namespace):
    """A rich Console: the terminal's width, or 120 columns when piped (so tables are not truncated)."""
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


def _gpu_dirs(args: argparse.Namespace) -> tuple:
    from pathlib import Path

    return tuple(Path(p) for p in (getattr(args, "gpu_dir", None) or []))


# models / gpus ------------------------------------------------------------------------------------------------


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in model presets", description="List the built-in model presets.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.models import presets

    items = list(presets().values())
    if args.json:
        report.print_json([p.model_dump() for p in items])
    else:
        report.render_models(_console(args), items)
    return 0


def add_gpus_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gpus", help="list the GPU profiles", description="List the GPU hardware profiles.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--gpu-dir", action="append", metavar="DIR", help="extra folder of GPU profile .toml files (repeatable; "
        "also $VRAMPLAN_GPU_DIR)"
    )
    p.set_defaults(run=run_gpus)


def run_gpus(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.hardware import load_profiles

    profiles = list(load_profiles(_gpu_dirs(args)).values())
    if args.json:
        report.print_json([g.model_dump() for g in profiles])
    else:
        report.render_gpus(_console(args), profiles)
    return 0


# estimate / compare -------------------------------------------------------------------------------------------


def add_plan_arguments(p: argparse.ArgumentParser, method_default: bool = True) -> None:
    """The training-plan flags shared by estimate, compare, suggest and calibrate (None = plan default)."""
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
    g.add_argument("--attn", choices=["eager", "sdpa", "flash_attention_2"], help="attention (default sdpa)")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help="default paged_adamw_8bit for qlora, adamw otherwise")
    if "--gpus" not in p._option_string_actions:  # a command may define --gpus itself (suggest)
        g.add_argument("--gpus", type=int, help="GPUs of a data-parallel job (default 1); sizes are then per GPU "
                       "and --batch is each GPU's micro-batch")
    g.add_argument("--sharding", choices=list(SHARDINGS), help="ddp | fsdp (FSDP2, ZeRO-3-like) | fsdp_grad_op "
                   "(ZeRO-2-like) | zero1/zero2/zero3 (DeepSpeed) (default: none on one GPU, ddp on several)")
    g.add_argument("--offload", choices=["none", "optimizer", "params"],
                   help="state in host RAM: optimizer (DeepSpeed ZeRO-Offload) or params (+ grads + optimizer: "
                   "FSDP CPU offload, ZeRO-3)")
    g.add_argument("--quant-storage", choices=["uint8", "bf16", "fp16", "fp32"],
                   help="qlora: dtype packed 4-bit weights are stored in (bnb_4bit_quant_storage; "
                   "FSDP/ZeRO-3 need a float one, the default there)")


def plan_from_args(args: argparse.Namespace, **override: object):
    from vramplan.plan import make_plan

    fields = ("method", "param_dtype", "mixed_precision", "quant", "double_quant", "compute_dtype", "kbit_upcast",
              "rank", "alpha", "targets", "lora_dropout", "batch", "seq", "grad_accum", "grad_ckpt",
              "ckpt_reentrant", "attn", "optimizer", "gpus", "sharding", "offload", "quant_storage")
    options = {f: getattr(args, f, None) for f in fields}
    options.update(override)
    return make_plan(**options)


def _add_gpu_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", help="GPU profile (e.g. rtx4090, a100-80gb): adds CUDA context + allocator reserve")
    p.add_argument("--gpu-dir", action="append", metavar="DIR",
                   help="extra folder of GPU profile .toml files (repeatable; also $VRAMPLAN_GPU_DIR)")


def add_estimate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="estimate the peak memory of one training plan",
                       description="Estimate every byte of a training step: components and phases.")
    p.add_argument("--model", required=True, help="preset name, config.json path, model folder or HF hub id")
    add_plan_arguments(p)
    _add_gpu_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_estimate)


def run_estimate(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.api import estimate

    result = estimate(args.model, plan_from_args(args), gpu=args.gpu, gpu_dirs=_gpu_dirs(args))
    if args.json:
        report.print_json(report.estimate_json(result))
    else:
        report.render_estimate(_console(args), result)
    return 0


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="full fine-tuning vs LoRA vs QLoRA, side by side",
                       description="Compare full fine-tuning, LoRA and QLoRA memory for one or more models.")
    p.add_argument("--model", required=True, help="one model or a comma list (llama2-7b,llama2-13b)")
    add_plan_arguments(p, method_default=False)
    _add_gpu_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.api import compare

    rows = compare([m for m in args.model.split(",") if m.strip()], lambda method: _method_plan(args, method),
                   gpu=args.gpu, gpu_dirs=_gpu_dirs(args))
    if args.json:
        report.print_json([report.estimate_json(r) for r in rows])
    else:
        report.render_compare(_console(args), rows)
    return 0


def _method_plan(args: argparse.Namespace, method: str):
    """The shared flags applied to one method; options that do not apply to it are left out."""
    lora_only = ("rank", "alpha", "targets", "lora_dropout")
    qlora_only = ("quant", "double_quant", "compute_dtype", "kbit_upcast", "quant_storage")
    drop = (lora_only + qlora_only) if method == "full" else qlora_only if method == "lora" else ()
    return plan_from_args(args, method=method, **dict.fromkeys(drop))


# Entry point --------------------------------------------------------------------------------------------------

PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_models_parser,
    add_gpus_parser,
    add_estimate_parser,
    add_compare_parser,
    add_calibrate_parser,
    add_calibrations_parser,
    add_suggest_parser,
]


def build_parser() -> argparse.ArgumentParser:
    from vramplan import __version__

    parser = _Parser(
        prog="vramplan",
        description="GPU-memory planner and hardware advisor for fine-tuning LLMs (full, LoRA, QLoRA).",
    )
    parser.add_argument("--version", action="version", version=f"vramplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except VramplanError as exc:
        print(f"vramplan {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vramplan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
