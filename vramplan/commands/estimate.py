"""`vramplan estimate` (one plan, every byte) and `vramplan compare` (full vs LoRA vs QLoRA side by side)."""

from __future__ import annotations

import argparse
import sys

from vramplan.commands.plan_flags import (
    add_gpu_arguments,
    add_plan_arguments,
    console,
    gpu_dirs,
    method_plan,
    plan_from_args,
)

# The README's rule, for every command: 0 fits, 1 does not fit, 2 bad input. Without --gpu nothing is judged
# (exit 0); with one, estimate says 1 when the plan does not fit, compare when a model has no method that fits.
DOES_NOT_FIT = 1


def add_estimate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="estimate the peak memory of one training plan",
                       description="Estimate every byte of a training step: components and phases.")
    p.add_argument("--model", help="preset name, config.json path, model folder or HF hub id (or from --config)")
    add_plan_arguments(p)
    add_gpu_arguments(p)
    p.add_argument("--no-calibration", action="store_true", help="with --gpu: leave the stored CUDA runs on this GPU "
                   "out (the reserve and CUDA context come from the model only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_estimate)


def run_estimate(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.api import estimate

    result = estimate(args.model, plan_from_args(args), gpu=args.gpu, gpu_dirs=gpu_dirs(args))
    from vramplan.models import context_warning

    beyond = context_warning(args.model, result.plan["seq"])
    if beyond:  # a warning, not an error: the step runs, the memory is right (stderr keeps --json parseable)
        print(f"vramplan estimate: warning: {beyond}", file=sys.stderr)
    words = None
    if args.gpu and not args.no_calibration:  # vramplan.calibration_learning: context and reserve of stored runs
        from vramplan.api import calibrated

        result, words = calibrated(result, None, gpu_dirs(args))
    if args.json:
        report.print_json(report.estimate_json(result))
    else:
        report.render_estimate(console(args), result)
    if words:
        print(words, file=sys.stderr if args.json else sys.stdout)
    return DOES_NOT_FIT if result.fits is False else 0


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="full fine-tuning vs LoRA vs QLoRA, side by side",
                       description="Compare full fine-tuning, LoRA and QLoRA memory for one or more models.")
    p.add_argument("--model", help="one model or a comma list (llama2-7b,llama2-13b) (or from --config)")
    add_plan_arguments(p, method_default=False)
    add_gpu_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.api import compare

    rows = compare([m for m in args.model.split(",") if m.strip()], lambda method: method_plan(args, method),
                   gpu=args.gpu, gpu_dirs=gpu_dirs(args))
    if args.json:
        report.print_json([report.estimate_json(r) for r in rows])
    else:
        report.render_compare(console(args), rows)
    return DOES_NOT_FIT if _some_model_fits_nowhere(rows) else 0


def _some_model_fits_nowhere(rows: list) -> bool:
    """With a GPU: a model none of whose methods fits (`fits` is None without a GPU: nothing judged)."""
    return any(all(r.fits is False for r in rows if r.model == m) for m in {r.model for r in rows})
