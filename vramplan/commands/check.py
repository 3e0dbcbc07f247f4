"""`vramplan check FILE...`: the preflight for a training config. Reads the config (vramplan.configs), shows
which plan each field made and where it came from, estimates the plan, gives the verdict for `--gpu`, and lists
every field that does not change memory (`ignored: learning_rate`, one line each). Flags override the config,
exactly as `vramplan estimate --config FILE` does (the same `finish_plan_args`). Exit code: 0 fits (or no
--gpu), 1 does not fit, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

from vramplan.commands.estimate import DOES_NOT_FIT
from vramplan.commands.plan_flags import (
    add_gpu_arguments,
    add_plan_arguments,
    console,
    finish_plan_args,
    gpu_dirs,
    plan_from_args,
)


def add_check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check",
                       description="Read a training config (axolotl, LLaMA-Factory, TRL, TrainingArguments JSON, "
                       "adapter_config.json, BitsAndBytesConfig, accelerate, DeepSpeed; several files are read "
                       "together), estimate it, say whether it fits --gpu, and list the fields that do not change "
                       "memory. Flags override the config.")
    p.add_argument("files", nargs="+", metavar="FILE", help="the training config file(s)")
    p.add_argument("--model", help="override the config's model (preset, config.json, folder or hub id)")
    add_plan_arguments(p)
    add_gpu_arguments(p)
    p.add_argument("--no-calibration", action="store_true",
                   help="leave stored CUDA runs out (reserve and CUDA context from the model only)")
    p.add_argument("--store", metavar="PATH", help="calibration database whose CUDA runs on --gpu correct the "
                   "reserve and context (default $VRAMPLAN_CALIBRATION_DB, else the cache folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object: the reading and the estimate")
    p.set_defaults(run=run_check, plan_flags=False)  # finish_plan_args runs in run_check, after FILE joins --config


def run_check(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.api import estimate
    from vramplan.configs import read_config

    files = [*args.files, *(args.config or [])]
    args.config = files
    with contextlib.redirect_stderr(io.StringIO()):  # its notes and ignored fields are shown below instead
        finish_plan_args(args)
    reading = read_config(files[0] if len(files) == 1 else files, args.config_format)
    plan = plan_from_args(args)
    result = estimate(args.model, plan, gpu=args.gpu, gpu_dirs=gpu_dirs(args))
    result, words = _calibrated(result, args)
    if args.json:
        report.print_json({"reading": reading.to_dict(), "estimate": report.estimate_json(result),
                           "calibration": words})
    else:
        out = console(args)
        report.render_reading(out, reading, plan, args.model)
        report.render_estimate(out, result)
        if words:
            out.print(words)
        for name in reading.ignored:
            out.print(f"ignored: {name}", highlight=False)
    return DOES_NOT_FIT if result.fits is False else 0


def _calibrated(result: Any, args: argparse.Namespace) -> tuple[Any, str | None]:
    """With --gpu: the reserve and CUDA context learnt from stored runs on this GPU (vramplan.measure.store),
    unless --no-calibration."""
    if not args.gpu or args.no_calibration:
        return result, None
    from vramplan.api import calibrated

    return calibrated(result, getattr(args, "store", None), gpu_dirs(args))
