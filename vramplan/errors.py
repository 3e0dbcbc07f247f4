"""One error hierarchy. The CLI catches `VramplanError` and prints its message on one line.

Messages say how to fix the input: list the valid choices and suggest the closest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VramplanError(Exception):
    """Base of every error vramplan raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 2


class InputError(VramplanError):
    """The user gave something vramplan cannot use (unknown name, bad flag combination, bad file)."""


class UnknownModelError(InputError):
    """`--model` names no preset, config file, folder or cached hub id."""


class UnknownGpuError(InputError):
    """`--gpu` names no hardware profile."""


class UnsupportedArchitectureError(InputError):
    """A config's `model_type` has no native spec and the transformers fallback is unavailable."""


class ConfigFileError(InputError):
    """A config.json or hardware profile file is missing, malformed or fails validation."""


class PlanError(InputError):
    """Training-plan options that make no sense alone or together."""


class MeasurementError(VramplanError):
    """The measuring part (micro-trainer, tracer) could not run: missing packages, no CUDA, ..."""

    exit_code = 1


class StoreError(VramplanError):
    """The calibration database cannot be opened, read or written."""

    exit_code = 1


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The `n` choices closest to `word` (case-insensitive), best first."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean a, b?)' or '' when nothing is close."""
    hits = closest(word, choices)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""
