"""The command line: a registrar. Each subcommand lives in `vramplan.commands.<module>` as a parser function
(`add_<name>_parser`) and a `run_<name>` function; the training-plan flags they share are in
`vramplan.commands.plan_flags`; all rendering lives in `vramplan.report`.

Every `VramplanError` (and every argparse error) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vramplan.commands.calibrate import add_calibrate_parser, add_calibrations_parser
from vramplan.commands.estimate import add_compare_parser, add_estimate_parser
from vramplan.commands.listing import add_gpus_parser, add_models_parser
from vramplan.commands.plan_flags import add_plan_arguments, plan_from_args  # noqa: F401  (re-exported)
from vramplan.commands.plan_flags import console as _console  # noqa: F401  (suggest/calibrate import these)
from vramplan.commands.plan_flags import gpu_dirs as _gpu_dirs  # noqa: F401
from vramplan.commands.suggest import add_suggest_parser
from vramplan.errors import VramplanError

PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_models_parser,
    add_gpus_parser,
    add_estimate_parser,
    add_compare_parser,
    add_calibrate_parser,
    add_calibrations_parser,
    add_suggest_parser,
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`vramplan estimate: error: ...`) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


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
