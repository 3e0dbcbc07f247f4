"""`vramplan models` and `vramplan gpus`: list the built-in model presets and the GPU profiles."""

from __future__ import annotations

import argparse
import sys

from vramplan.commands.plan_flags import add_gpu_dir_argument, gpu_dirs


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in model presets", description="List the built-in model presets.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    from vramplan import report

    if args.json:  # validated (pydantic): the JSON lists every field with its default
        from vramplan.models import presets

        report.print_json([p.model_dump() for p in presets().values()])
    else:  # the index as written: no pydantic, so `vramplan models` starts as fast as `--help`
        from vramplan.presets import index

        report.render_models(sys.stdout, index())
    return 0


def add_gpus_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gpus", help="list the GPU profiles", description="List the GPU hardware profiles.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_gpu_dir_argument(p)
    p.set_defaults(run=run_gpus)


def run_gpus(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.hardware import load_profiles

    profiles = list(load_profiles(gpu_dirs(args)).values())
    if args.json:
        report.print_json([g.model_dump() for g in profiles])
    else:
        report.render_gpus(sys.stdout, profiles)
    return 0
