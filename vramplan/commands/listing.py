"""`vramplan models` and `vramplan gpus`: list the built-in model presets and the GPU profiles.

Both tables start as fast as `--help` (issue 10; benchmarks/cli_startup.py): they read the data files as written
(`vramplan.datafiles.read_toml`: tomllib once per edit of a file, then its marshal cache), without rich or
the validated records. What they list is what the validated loaders hold (tests/report/test_listing.py,
tests/test_cli_startup_imports.py). `--json` and user GPU folders go through the validated loaders.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

# vramplan.hardware.ENV_VAR, spelled here so the listing need not import hardware (its records); a test ties the two
GPU_DIR_ENV = "VRAMPLAN_GPU_DIR"


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", description="List the built-in model presets.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    from vramplan import report

    if args.json:  # validated records: the JSON lists every field with its default
        from vramplan.models import presets

        report.print_json([p.to_dict() for p in presets().values()])
    else:  # the index as written, unvalidated, so `vramplan models` starts as fast as `--help`
        from vramplan.presets import index

        report.render_models(sys.stdout, index())
    return 0


def add_gpus_parser(sub: argparse._SubParsersAction) -> None:
    from vramplan.commands.parsing import add_gpu_dir_argument

    p = sub.add_parser("gpus", description="List the GPU hardware profiles.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_gpu_dir_argument(p)
    p.set_defaults(run=run_gpus)


def run_gpus(args: argparse.Namespace) -> int:
    from vramplan import report

    if not args.json and not args.gpu_dir and not os.environ.get(GPU_DIR_ENV):
        report.render_gpus(sys.stdout, builtin_gpus())  # the built-in files, checked by the test suite
        return 0
    from vramplan.commands.parsing import gpu_dirs
    from vramplan.hardware import load_profiles

    profiles = list(load_profiles(gpu_dirs(args)).values())  # user files: validated, one line on a bad one
    if args.json:
        report.print_json([g.to_dict() for g in profiles])
    else:
        report.render_gpus(sys.stdout, profiles)
    return 0


def builtin_gpus() -> list[SimpleNamespace]:
    """The built-in GPU profiles as their files are written, in `vramplan.hardware.load_profiles`' order (file
    name), each with the fields the table reads (a profile without BF16 leaves `bf16_tflops_dense` out: None)."""
    from vramplan.datafiles import builtin_gpu_dir, read_toml

    folder = builtin_gpu_dir()
    names = sorted(n for n in os.listdir(folder) if n.endswith(".toml"))
    return [SimpleNamespace(**{"bf16_tflops_dense": None, **read_toml(os.path.join(folder, n))}) for n in names]
