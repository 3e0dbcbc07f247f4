"""The command line: argparse parsers and `run_*` functions; all rendering lives in `vramplan.report`.

Every `VramplanError` (and every argparse error) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vramplan.errors import VramplanError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`vramplan estimate: error: ...`) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _console(args: argparse.Namespace):
    from rich.console import Console

    return Console(width=getattr(args, "width", None))


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


# Entry point --------------------------------------------------------------------------------------------------

PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [add_models_parser, add_gpus_parser]


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
