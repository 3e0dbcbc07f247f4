"""The command line: a registrar. `COMMANDS` names each subcommand, the module of `vramplan.commands` holding its
`add_<name>_parser` and `run_<name>`, and its one-line help (owned here, not repeated there). Only the invoked
command's module is imported and its parser built (`parsing.LazySubcommands`): `vramplan --help` builds none.
Shared plan flags: `commands.plan_flags`; argv reading: `commands.parsing`; all rendering: `vramplan.report`.
Every `VramplanError` (and every argparse error) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vramplan.commands.parsing import ClosedPipeGuard, LazySubcommands, StrictParser, parse_argv

COMMANDS = {  # name: (module in vramplan.commands, the one-line help `vramplan --help` shows)
    "models": ("listing", "list the built-in model presets"),
    "gpus": ("listing", "list the GPU profiles"),
    "estimate": ("estimate", "estimate the peak memory of one training plan"),
    "compare": ("estimate", "full fine-tuning vs LoRA vs QLoRA, side by side"),
    "calibrate": ("calibrate", "measure a plan with the micro-trainer and compare it with the estimate"),
    "calibrations": ("calibrate", "list, export or import the stored calibration records"),
    "suggest": ("suggest", "recommend the best setups that fit a GPU, and say why"),
    "check": ("check", "preflight a training config: plan, estimate, verdict, ignored fields"),
    "infer": ("infer", "memory of generating with a (quantized, adapted or merged) model"),
    "merge": ("merge", "memory of merging a (Q)LoRA adapter and the merged size on disk"),
    "plot": ("plot", "figures: memory vs seq / batch per method, the peak's breakdown, the phases"),
    "serve": ("serve", "a local web page to tune a plan (needs vramplan[web])"),
}


def build_parser() -> argparse.ArgumentParser:
    from vramplan import __version__

    parser = StrictParser(
        prog="vramplan",
        description="GPU-memory planner and hardware advisor for fine-tuning LLMs (full, LoRA, QLoRA). "
        "Exit codes: 0 fits, 1 does not fit (with a GPU), 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"vramplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=StrictParser)
    parser.set_defaults(subparsers=LazySubcommands(sub, COMMANDS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_argv(parser, sys.argv[1:] if argv is None else argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    stdout, sys.stdout = sys.stdout, ClosedPipeGuard(sys.stdout)
    try:
        if getattr(args, "plan_flags", False):
            from vramplan.commands.plan_flags import finish_plan_args

            finish_plan_args(args)
        code = args.run(args)
        sys.stdout.flush()
        return code
    except Exception as exc:
        from vramplan.errors import VramplanError  # here: a command that raises none never loads it (nor difflib)

        if not isinstance(exc, VramplanError):
            raise
        print(f"vramplan {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vramplan: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
