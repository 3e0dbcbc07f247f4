"""The command line: a registrar. Each subcommand lives in `vramplan.commands.<module>` as a parser function
(`add_<name>_parser`) and a `run_<name>` function; the training-plan flags they share are in
`vramplan.commands.plan_flags`, argument reading in `vramplan.commands.parsing`, all rendering in `vramplan.report`.

Every `VramplanError` (and every argparse error) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vramplan.commands import calibrate, check, estimate, infer, listing, merge, plot, serve, suggest
from vramplan.commands.parsing import ClosedPipeGuard, StrictParser, parse_argv
from vramplan.commands.plan_flags import finish_plan_args
from vramplan.errors import VramplanError

PARSERS = (
    listing.add_models_parser,
    listing.add_gpus_parser,
    estimate.add_estimate_parser,
    estimate.add_compare_parser,
    calibrate.add_calibrate_parser,
    calibrate.add_calibrations_parser,
    suggest.add_suggest_parser,
    check.add_check_parser,
    infer.add_infer_parser,
    merge.add_merge_parser,
    plot.add_plot_parser,
    serve.add_serve_parser,
)


def build_parser() -> argparse.ArgumentParser:
    from vramplan import __version__

    parser = StrictParser(
        prog="vramplan",
        description="GPU-memory planner and hardware advisor for fine-tuning LLMs (full, LoRA, QLoRA). "
        "Exit codes: 0 fits, 1 does not fit (with a GPU), 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"vramplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=StrictParser)
    for add in PARSERS:
        add(sub)
    parser.set_defaults(subparsers=sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # pydantic scans every installed distribution's entry points for plugins at its first model: the CLI uses none
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    parser = build_parser()
    args = parse_argv(parser, sys.argv[1:] if argv is None else argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    stdout, sys.stdout = sys.stdout, ClosedPipeGuard(sys.stdout)
    try:
        if getattr(args, "plan_flags", False):
            finish_plan_args(args)
        code = args.run(args)
        sys.stdout.flush()
        return code
    except VramplanError as exc:
        print(f"vramplan {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vramplan: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
