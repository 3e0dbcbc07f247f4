"""The command line: a registrar. Each subcommand lives in `vramplan.commands.<module>` as a parser function
(`add_<name>_parser`) and a `run_<name>` function; the training-plan flags they share are in
`vramplan.commands.plan_flags`; all rendering lives in `vramplan.report`.

Every `VramplanError` (and every argparse error) ends as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from vramplan.commands.calibrate import add_calibrate_parser, add_calibrations_parser
from vramplan.commands.check import add_check_parser
from vramplan.commands.estimate import add_compare_parser, add_estimate_parser
from vramplan.commands.infer import add_infer_parser
from vramplan.commands.listing import add_gpus_parser, add_models_parser
from vramplan.commands.merge import add_merge_parser
from vramplan.commands.plan_flags import (  # noqa: F401
    add_plan_arguments,
    finish_plan_args,
    plan_from_args,
)
from vramplan.commands.plan_flags import console as _console  # noqa: F401  (suggest/calibrate import these)
from vramplan.commands.plan_flags import gpu_dirs as _gpu_dirs  # noqa: F401
from vramplan.commands.plot import add_plot_parser
from vramplan.commands.serve import add_serve_parser
from vramplan.commands.suggest import add_suggest_parser
from vramplan.errors import VramplanError, did_you_mean

PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_models_parser,
    add_gpus_parser,
    add_estimate_parser,
    add_compare_parser,
    add_calibrate_parser,
    add_calibrations_parser,
    add_suggest_parser,
    add_check_parser,
    add_infer_parser,
    add_merge_parser,
    add_plot_parser,
    add_serve_parser,
]


class _Parser(argparse.ArgumentParser):
    """argparse, strict and one line: no prefix matching (`--lora 0.05` must not set --lora-dropout), a usage
    error is `vramplan estimate: error: ...` with a did-you-mean and exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: '{value}' (choose from {', '.join(choices)})"
                                         f"{did_you_mean(str(value), choices)}")


def build_parser() -> argparse.ArgumentParser:
    from vramplan import __version__

    parser = _Parser(
        prog="vramplan",
        description="GPU-memory planner and hardware advisor for fine-tuning LLMs (full, LoRA, QLoRA). "
        "Exit codes: 0 fits, 1 does not fit (with a GPU), 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"vramplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in PARSERS:
        add(sub)
    parser.set_defaults(subparsers=sub.choices)
    return parser


def _dashed(token: str) -> str:
    """`--per_device_train_batch_size=4` -> `--per-device-train-batch-size=4`: HfArgumentParser's spelling."""
    if not token.startswith("--") or token == "--":
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse; an unknown flag is an error of its subcommand, with the closest flags it has."""
    args, extras = parser.parse_known_args([_dashed(a) for a in argv])
    if extras:
        owner = args.subparsers.get(getattr(args, "command", None) or "", parser)
        flags = [f for f in extras if f.startswith("-")]
        hint = did_you_mean(flags[0].partition("=")[0], owner._option_string_actions) if flags else ""
        owner.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    stdout, sys.stdout = sys.stdout, _ClosedPipeGuard(sys.stdout)
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


class _ClosedPipeGuard:
    """stdout that goes quiet when the reader has gone (`vramplan suggest ... | head -1`), so the command still
    returns its verdict's exit code: Python would raise BrokenPipeError, and rich's `Console.on_broken_pipe` exits
    1, which reads as "does not fit". The file descriptor is pointed at /dev/null so the exit flush succeeds."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._go_quiet()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._go_quiet()

    def _go_quiet(self) -> None:
        import os

        self._gone = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):  # no file descriptor (a test's captured stream)
            pass

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
