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
    p = sub.add_parser("estimate",
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

    beyond = context_warning(args.model, result.plan.seq)
    if beyond:  # a warning, not an error: the step runs, the memory is right (stderr keeps --json parseable)
        print(f"vramplan estimate: warning: {beyond}", file=sys.stderr)
    words = None
    if args.gpu and not args.no_calibration:  # vramplan.measure.learning: context and reserve of stored runs
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
    p = sub.add_parser("compare",
                       description="Compare full fine-tuning, LoRA and QLoRA memory for one or more models.")
    p.add_argument("--model", help="one model or a comma list (llama2-7b,llama2-13b) (or from --config)")
    add_plan_arguments(p, method_default=False)
    add_gpu_arguments(p)
    i = p.add_argument_group("inference column (vramplan.inference: serve 4-bit + adapter, or merge into 16-bit?)")
    i.add_argument("--infer-context", type=int, metavar="N", help="add each method's served model generating at "
                   "this context (prompt + new tokens): full in 16-bit, LoRA merged into 16-bit, QLoRA as the 4-bit "
                   "base with the unmerged adapter")
    i.add_argument("--infer-batch", type=int, default=1, metavar="B", help="sequences generated together (default 1)")
    i.add_argument("--infer-new-tokens", type=int, default=256, metavar="N", help="tokens generated (default 256)")
    p.add_argument("--json", action="store_true", help="print JSON (with --infer-context each row has `inference`: "
                   "what `infer --json` prints)")
    p.set_defaults(run=run_compare)


# What each method's fine-tuned model is served as in the inference column: its own weights in 16-bit (full),
# the adapter merged into the 16-bit base (LoRA: peft merge_and_unload), the 4-bit base with the adapter left
# unmerged (QLoRA: the serve-or-merge question's other side; nf4 and fp4 store the same bytes).
SERVED_AS = {"full": "none", "lora": "merged", "qlora": "nf4"}


def served_plan(args: argparse.Namespace, row):
    """The `vramplan.inference` plan of one compare row's served model (SERVED_AS), at --infer-context/-batch."""
    from vramplan.inference import make_inference_plan

    plan = row.plan
    sixteen = [d for d in (plan.compute_dtype, plan.mixed_precision, plan.param_dtype) if d in ("bf16", "fp16")]
    adapter = plan.method != "full"
    return make_inference_plan(quant=SERVED_AS[plan.method], dtype=(sixteen or ["bf16"])[0],
                               rank=plan.rank if adapter else None, targets=plan.targets if adapter else None,
                               batch=args.infer_batch, context=args.infer_context,
                               new_tokens=args.infer_new_tokens, attn=plan.attn,
                               double_quant=plan.double_quant if adapter else None)


def _inference_rows(args: argparse.Namespace, rows: list) -> list | None:
    """(estimate, max batch, max context) per row from `commands.infer.infer_result`, or None without the flag."""
    if args.infer_context is None:
        return None
    from vramplan.commands.infer import infer_result
    from vramplan.errors import InputError

    if args.infer_batch < 1 or args.infer_new_tokens < 1:
        raise InputError("--infer-batch and --infer-new-tokens: give whole numbers from 1")
    if args.infer_context <= args.infer_new_tokens:
        raise InputError(f"--infer-context {args.infer_context} must be above --infer-new-tokens "
                         f"{args.infer_new_tokens} (the prompt is context - new tokens)")

    return [infer_result(r.model, served_plan(args, r), args.gpu, gpu_dirs(args)) for r in rows]


def run_compare(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.api import compare

    rows = compare([m for m in args.model.split(",") if m.strip()], lambda method: method_plan(args, method),
                   gpu=args.gpu, gpu_dirs=gpu_dirs(args))
    served = _inference_rows(args, rows)
    if args.json:
        from vramplan.commands.infer import infer_json

        report.print_json([report.estimate_json(r) | ({"inference": infer_json(*served[i])} if served else {})
                           for i, r in enumerate(rows)])
    else:
        report.render_compare(console(args), rows, served)
    return DOES_NOT_FIT if _some_model_fits_nowhere(rows) else 0


def _some_model_fits_nowhere(rows: list) -> bool:
    """With a GPU: a model none of whose methods fits (`fits` is None without a GPU: nothing judged)."""
    return any(all(r.fits is False for r in rows if r.model == m) for m in {r.model for r in rows})
