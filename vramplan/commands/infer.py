"""`vramplan infer`: the GPU memory of `model.generate(...)` (vramplan.inference), and the largest batch or
context that fits a GPU."""

from __future__ import annotations

import argparse

from vramplan.commands.plan_flags import add_gpu_arguments, console, gpu_dirs

DOES_NOT_FIT = 1
QUANT_CHOICES = ("nf4", "int8", "none", "merged")


def add_infer_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer",
                       description="Estimate the GPU memory of transformers' generate: weights, KV cache, prefill, "
                       "the last decode step; with --gpu, the largest batch and context that fit.")
    p.add_argument("--model", required=True, help="preset name, config.json path, model folder or HF hub id")
    p.add_argument("--quant", choices=QUANT_CHOICES, default="nf4",
                   help="weights: nf4 (4-bit) or int8 (bitsandbytes), none (16-bit), merged (16-bit, adapter "
                   "merged in) (default nf4)")
    p.add_argument("--adapter-rank", "--rank", dest="rank", type=int, help="an unmerged LoRA adapter of this rank")
    p.add_argument("--targets", help="the adapter's target modules: default, attention, all-linear or a list")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="load/compute dtype")
    p.add_argument("--batch", type=int, default=1, help="sequences generated together (default 1)")
    p.add_argument("--context", type=int, default=4096, help="prompt + new tokens (default 4096)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated (default 256)")
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                   help="transformers' DynamicCache (default) or cache_implementation='static'")
    p.add_argument("--attn", choices=("sdpa", "eager", "flash_attention_2"), default="sdpa")
    p.add_argument("--greedy", action="store_true", help="do_sample=False (default: sampling with top-k/top-p, "
                   "whose logits processors copy the logits)")
    p.add_argument("--compare", action="store_true", help="serve or merge: every weight format side by side "
                   "(nf4/int8/16-bit with the unmerged adapter, merged 16-bit)")
    add_gpu_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (a list with --compare)")
    p.set_defaults(run=run_infer)


def infer_plan(args: argparse.Namespace):
    from vramplan.inference import make_inference_plan

    return make_inference_plan(quant=args.quant, rank=args.rank, targets=args.targets, dtype=args.dtype,
                               batch=args.batch, context=args.context, new_tokens=args.new_tokens, cache=args.cache,
                               attn=args.attn, greedy=args.greedy)


def infer_result(model: str, plan, gpu: str | None, dirs=()) -> tuple:
    """(estimate, largest batch, largest context): the last two None without a GPU."""
    from vramplan.inference import estimate_inference, largest_fitting, on_gpu
    from vramplan.models import resolve_model

    spec = resolve_model(model)
    result = estimate_inference(spec, plan)
    if gpu is None:
        return result, None, None
    from vramplan.hardware import resolve_gpu

    profile = resolve_gpu(gpu, tuple(dirs))
    cap = int(spec.config.get("max_position_embeddings") or 131072)
    return (on_gpu(result, profile), largest_fitting(spec, plan, profile, "batch", 4096),
            largest_fitting(spec, plan, profile, "context", max(cap, plan.context)))


def infer_json(result, max_batch: int | None, max_context: int | None) -> dict:
    return {**result.to_dict(), "max_batch": max_batch, "max_context": max_context}


def run_infer(args: argparse.Namespace) -> int:
    from vramplan import report

    if args.compare:
        return _run_compare(args)
    result, max_batch, max_context = infer_result(args.model, infer_plan(args), args.gpu, gpu_dirs(args))
    if args.json:
        report.print_json(infer_json(result, max_batch, max_context))
    else:
        report.render_infer(console(args), result, max_batch, max_context)
    return DOES_NOT_FIT if result.fits is False else 0


def _run_compare(args: argparse.Namespace) -> int:
    from vramplan import report

    rows = []
    for quant in QUANT_CHOICES:
        args.quant = quant
        rows.append(infer_result(args.model, infer_plan(args), args.gpu, gpu_dirs(args)))
    if args.json:
        report.print_json([infer_json(*row) for row in rows])
    else:
        report.render_infer_compare(console(args), rows)
    return DOES_NOT_FIT if args.gpu and not any(r[0].fits for r in rows) else 0
