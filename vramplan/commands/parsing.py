"""How the CLI reads its command line and writes its output: argparse made strict, subcommand parsers built only
when invoked, Hugging Face's underscore spelling of flags, `--gpu-dir`, and a stdout that survives a closed pipe.
`vramplan.cli` (the registrar) uses them.

Start-up: `vramplan --help` imports only this module, argparse and the registrar, so nothing here imports `typing`
or `vramplan.errors` (difflib) at import time; they load where an error is reported.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a tenth of `--help`'s own start-up)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import TextIO


def terminal_columns() -> int:
    """The columns `shutil.get_terminal_size()` gives (argparse's help width): $COLUMNS, else stdout's terminal,
    else 80. Read here so building a parser does not import shutil (and with it zlib, bz2, lzma: 2 ms)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter at the width argparse would pick (`terminal_columns() - 2`), without shutil."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, terminal_columns() - 2 if width is None else width)


class StrictParser(argparse.ArgumentParser):
    """argparse, strict and one line: no prefix matching (`--lora 0.05` must not set --lora-dropout), a usage
    error is `vramplan estimate: error: ...` with a did-you-mean and exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        if action.choices is not None and value not in action.choices:
            from vramplan.errors import did_you_mean

            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: '{value}' (choose from {', '.join(choices)})"
                                         f"{did_you_mean(str(value), choices)}")


class LazySubcommands(Mapping):
    """Subcommand name -> its parser, built at the first lookup. It stands in for the `_name_parser_map` (also the
    `choices`) of argparse's `_SubParsersAction`, whose `__call__` looks the invoked name up: so `vramplan --help`
    lists every command from the registrar's table and builds none, and `vramplan estimate ...` imports
    `vramplan.commands.estimate` and builds that one parser (`add_estimate_parser`). Membership, iteration (the
    invalid-choice message and its did-you-mean) see every name without building anything. It relies on the
    action's `_name_parser_map`, `_choices_actions` and `_ChoicesPseudoAction`, the same in argparse from Python 3.10
    to 3.13 (checked: --help, a subcommand, an unknown one under each)."""

    def __init__(self, action: argparse._SubParsersAction, commands: Mapping[str, tuple[str, str]]) -> None:
        """`commands`: name -> (module under `vramplan.commands`, the one-line help `vramplan --help` shows)."""
        self._action = action
        self._modules = {name: module for name, (module, _) in commands.items()}
        self._parsers: dict[str, argparse.ArgumentParser] = {}
        self._building = ""
        for name, (_, text) in commands.items():
            action._choices_actions.append(action._ChoicesPseudoAction(name, (), text))
        action._name_parser_map = action.choices = self  # type: ignore[assignment]

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        if name not in self._parsers and name in self._modules:
            self._building = name  # add_parser refuses a name already in the map
            try:
                module = __import__(f"vramplan.commands.{self._modules[name]}", fromlist=["_"])
                getattr(module, f"add_{name}_parser")(self._action)  # its add_parser stores the parser here
            finally:
                self._building = ""
        return self._parsers[name]

    def __setitem__(self, name: str, parser: argparse.ArgumentParser) -> None:
        self._parsers[name] = parser

    def __contains__(self, name: object) -> bool:
        return name != self._building and (name in self._modules or name in self._parsers)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._modules, *self._parsers]))

    def __len__(self) -> int:
        return len(self._modules.keys() | self._parsers.keys())


def gpu_dirs(args: argparse.Namespace) -> tuple[Path, ...]:
    """The `--gpu-dir` folders given (extra GPU profile folders)."""
    from pathlib import Path  # here: pathlib is 3 ms of a start-up, and only a given folder needs it

    return tuple(Path(p) for p in (getattr(args, "gpu_dir", None) or []))


def add_gpu_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-dir", action="append", metavar="DIR",
                   help="extra folder of GPU profile .toml files (repeatable; also $VRAMPLAN_GPU_DIR)")


def dashed(token: str) -> str:
    """`--per_device_train_batch_size=4` -> `--per-device-train-batch-size=4`: HfArgumentParser's spelling."""
    if not token.startswith("--") or token == "--":
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


def parse_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse; an unknown flag is an error of its subcommand, with the closest flags it has."""
    args, extras = parser.parse_known_args([dashed(a) for a in argv])
    if extras:
        from vramplan.errors import did_you_mean

        owner = args.subparsers.get(getattr(args, "command", None) or "", parser)
        flags = [f for f in extras if f.startswith("-")]
        hint = did_you_mean(flags[0].partition("=")[0], owner._option_string_actions) if flags else ""
        owner.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    return args


class ClosedPipeGuard:
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
