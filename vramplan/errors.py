"""One error hierarchy. The CLI catches `VramplanError` and prints its message on one line.

One exit-code rule: 2 when the input is wrong and the user can fix the command (`InputError` and everything under
it); 1 when the input is fine but this machine cannot carry it out or the answer is no (`MeasurementError`,
`StoreError`, `DoesNotFitError`). A verdict a command prints ("does not fit", "no plan fits") is not an error:
its command returns its own code (commands/estimate.py DOES_NOT_FIT). Every class lives here.
Messages say how to fix the input: list the valid choices and suggest the closest one.
"""

from __future__ import annotations

from collections.abc import Iterable


class VramplanError(Exception):
    """Base of every error vramplan raises on purpose. `exit_code` is what the CLI returns (the rule above)."""

    exit_code = 1


class InputError(VramplanError):
    """The user gave something vramplan cannot use (unknown name, bad flag combination, bad file)."""

    exit_code = 2


class UnknownModelError(InputError):
    """`--model` names no preset, config file, folder or cached hub id."""


class UnknownGpuError(InputError):
    """`--gpu` names no hardware profile."""


class UnsupportedArchitectureError(InputError):
    """A config's `model_type` has no native spec and the transformers fallback is unavailable."""


class ConfigFileError(InputError):
    """A config.json or hardware profile file is missing, malformed or fails validation."""


class ConfigReadError(InputError):
    """A training config file (vramplan.configs) cannot be read, or holds a field vramplan cannot model."""


class RecordError(InputError):
    """A record (vramplan.record) built from values that fail its checks: one line, `field: message`."""


class PlanError(InputError):
    """Training-plan options that make no sense alone or together."""


class AllocatorOutOfMemory(VramplanError):
    """The caching-allocator simulation (estimator/allocator.py, replay.py) cannot place a request: it fits neither
    a cached block nor a new segment, even after freeing the cache. device.py catches it (the plan does not fit
    on that card's capacity): a verdict, never shown to the user as an error."""


class MeasurementError(VramplanError):
    """The measuring part (micro-trainer, tracer) could not run: missing packages, no CUDA, ..."""


class StepOutOfMemory(MeasurementError):
    """A real CUDA step ran out of memory (vramplan.measure.cuda_memory): a result, not a failure. Carries where it
    happened and how far the allocator got (the phase's `max_memory_allocated()` / `max_memory_reserved()`)."""

    def __init__(self, phase: str, allocated_bytes: int, reserved_bytes: int, message: str) -> None:
        super().__init__(f"out of memory in the {phase} phase: {message}")
        self.phase = phase
        self.allocated_bytes = allocated_bytes
        self.reserved_bytes = reserved_bytes
        self.message = message


class MissingPackagesError(MeasurementError):
    """The measuring stack (torch, transformers, peft, bitsandbytes) is not installed."""


class StoreError(VramplanError):
    """The calibration database cannot be opened, read or written."""


class DoesNotFitError(VramplanError):
    """A training run's plan does not fit its GPU (`VramplanCallback(fail_if_not_fits=True)`, before training)."""


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The `n` choices closest to `word` (case-insensitive), best first."""
    import difflib  # imported when a message is written, not on every start (about 3 ms on 2 cores)

    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean a, b?)' or '' when nothing is close."""
    hits = closest(word, choices)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""
