"""How the CLI reads its command line and writes its output: argparse made strict, Hugging Face's underscore
spelling of flags, and a stdout that survives a closed pipe. `vramplan.cli` (the registrar) uses them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TextIO

from vramplan.errors import did_you_mean


class StrictParser(argparse.ArgumentParser):
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
