"""`vramplan plot`: figures of a model's training plans (vramplan.plots; matplotlib from the `plot` extra)."""

from __future__ import annotations

import argparse

from vramplan.commands.plan_flags import (
    add_gpu_arguments,
    add_plan_arguments,
    method_plan,
)

KINDS = ("seq", "batch", "breakdown", "timeline")


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot",
                       description="Draw full vs LoRA vs QLoRA: memory vs sequence length and vs micro-batch with the "
                       "GPU's line, the stacked breakdown of the peak, and the per-phase timeline.")
    p.add_argument("--model", help="preset name, config.json path, model folder or HF hub id (or from --config)")
    add_plan_arguments(p, method_default=False)
    add_gpu_arguments(p)
    p.add_argument("--kind", action="append", choices=(*KINDS, "all"),
                   help="which figure (repeatable; default all four in one image)")
    p.add_argument("--out", default="vramplan.png", help="output file: .png, .svg or .pdf (default vramplan.png)")
    p.set_defaults(run=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vramplan.commands.plan_flags import gpu_dirs
    from vramplan.errors import InputError
    from vramplan.plots import plot

    if not args.model:
        raise InputError("--model: give a model (preset, config.json, folder or hub id)")
    if gpu_dirs(args):
        raise InputError("--gpu-dir is not supported by plot yet")
    kinds = KINDS if not args.kind or "all" in args.kind else tuple(dict.fromkeys(args.kind))

    def plan_for(method: str, **update: int):
        plan = method_plan(args, method)
        return plan.replace(**update)

    out = plot(args.model, plan_for, args.gpu, kinds, Path(args.out))
    print(f"wrote {out}")
    return 0
