"""`vramplan merge`: peak GPU and host memory of merging a (Q)LoRA adapter, and the merged size on disk
(vramplan.merge)."""

from __future__ import annotations

import argparse

from vramplan.commands.plan_flags import add_gpu_arguments, console, gpu_dirs

DOES_NOT_FIT = 1


def add_merge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge",
                       description="Estimate merge_and_unload: into the 4-bit model (re-quantized, still 4-bit) or "
                       "into the base reloaded in 16-bit; then save_pretrained's safetensors shards.")
    p.add_argument("--model", required=True, help="preset name, config.json path, model folder or HF hub id")
    p.add_argument("--adapter-rank", "--rank", dest="rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--targets", help="the adapter's target modules: default, attention, all-linear or a list")
    p.add_argument("--method", choices=("4bit", "16bit"), default="16bit",
                   help="merge into the 4-bit model (peft bnb merge) or reload the base in 16-bit (default)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the model sits while merging")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--max-shard-gb", type=float, default=50.0,
                   help="save_pretrained max_shard_size in GB (transformers 5 default 50)")
    add_gpu_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_merge)


def merge_result(model: str, plan, gpu: str | None, dirs=()) -> tuple:
    """(estimate, device bytes on the GPU or None, fits or None)."""
    from vramplan.merge import estimate_merge
    from vramplan.models import resolve_model

    result = estimate_merge(resolve_model(model), plan)
    if gpu is None or plan.device != "cuda":
        return result, None, None
    from vramplan.api import allocator_reserve_bytes
    from vramplan.device import driver_context_bytes
    from vramplan.hardware import resolve_gpu

    profile = resolve_gpu(gpu, tuple(dirs))
    device = result.gpu_peak_bytes + driver_context_bytes(profile) + allocator_reserve_bytes(result.gpu_peak_bytes)
    return result, device, device <= profile.usable_bytes


def run_merge(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.errors import PlanError
    from vramplan.merge import MergePlan

    if args.max_shard_gb <= 0 or args.rank <= 0:
        raise PlanError("--max-shard-gb and --adapter-rank must be positive")
    plan = MergePlan(method=args.method, rank=args.rank, targets=args.targets, dtype=args.dtype, device=args.device,
                     max_shard_bytes=int(args.max_shard_gb * 10**9))
    result, device, fits = merge_result(args.model, plan, args.gpu, gpu_dirs(args))
    if args.json:
        report.print_json({**result.to_dict(), "gpu": args.gpu, "device_bytes": device, "fits": fits})
    else:
        report.render_merge(console(args), result, args.gpu, device, fits)
    return DOES_NOT_FIT if fits is False else 0
