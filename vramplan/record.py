"""Frozen, validated records: the core's typed inputs and results, without pydantic.

A `Record` subclass is a frozen, keyword-only dataclass whose fields are checked against their annotations each
time one is built (constructor, `replace`, `from_dict`):
- strict scalars: a bool is not an integer, a string is not a number, an integral float (2.0) is the integer 2;
- `Literal[...]` choices, `X | None`, nested records (a mapping is read as one), `tuple[T, ...]`, `list[T]`,
  `dict[str, T]`; any other class by `isinstance`.
A class fills its derived defaults in `_defaults` and adds its cross-field rules in `_validate` (raise ValueError
with a message that says how to fix the input). Every failure is one line, `field: message`, raised as the class's
`error` (an `InputError` unless the class names another: the CLI prints it and exits 2).

`to_dict()` is the JSON-ready form (records as dicts, tuples as lists, a non-finite float as None, the names in
`computed` added) that `from_dict` reads back.

Why not pydantic: on a cold `vramplan estimate --json`, importing pydantic and building its first schemas took
about 130 ms of 240 ms (benchmarks/cli_startup.py --breakdown, clean venv, 2 cores), for checks these records
need only a few lines for. Checkers are built from the annotations at a class's first instance, not at import.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union

from vramplan.errors import RecordError, did_you_mean

R = TypeVar("R", bound="Record")
Check = Callable[[Any], Any]  # returns the value (converted where the type allows), raises ValueError


class Record:
    """Base of every record. Subclasses are made frozen keyword-only dataclasses when defined."""

    error: ClassVar[type[Exception]] = RecordError  # raised, with a one-line message, when a check fails
    computed: ClassVar[tuple[str, ...]] = ()  # properties `to_dict` adds (and `from_dict` skips)
    extra: ClassVar[str] = "forbid"  # "forbid": an unknown key in `from_dict` is an error; "ignore": dropped
    exact_integers: ClassVar[bool] = False  # True: an integer field refuses every float (2.0 too)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        cls._checks = None  # type: ignore[attr-defined]  # built by _field_checks at the first instance

    def __post_init__(self) -> None:
        cls = type(self)
        checks = cls.__dict__["_checks"] or cls._field_checks()
        for name, check in checks:
            value = getattr(self, name)
            try:
                checked = check(value)
            except ValueError as exc:
                raise cls.error(f"{name}: {exc}") from None
            if checked is not value:
                object.__setattr__(self, name, checked)
        try:
            self._defaults()
            self._validate()
        except ValueError as exc:
            raise cls.error(str(exc)) from None

    def _defaults(self) -> None:
        """Fill the defaults that depend on other fields (with `_set`)."""

    def _validate(self) -> None:
        """Cross-field rules: raise ValueError with a one-line message that says how to fix the input."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @classmethod
    def _field_checks(cls) -> tuple[tuple[str, Check], ...]:
        hints = typing.get_type_hints(cls)
        checks = tuple((f.name, checker(hints[f.name], cls.exact_integers)) for f in dataclasses.fields(cls))
        cls._checks = checks  # type: ignore[attr-defined]
        return checks

    # Fields ---------------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def default_of(cls, name: str) -> Any:
        """The declared default of field `name` (a factory's product for a mutable default)."""
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        return field.default

    def replace(self: R, **changes: Any) -> R:
        """A copy with `changes`, checked like a new record."""
        return dataclasses.replace(self, **changes) if changes else self

    def derive(self: R, **changes: Any) -> R:
        """A copy with `changes` set as given, unchecked: a view the estimator derives from a checked record for
        its own use (DPO's concatenated batch is twice the user's and may pass the range a user may ask for)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        unknown = set(changes).difference(fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        copy = object.__new__(type(self))
        copy.__dict__.update(fields, **changes)  # fields only: a cached_property of the original is not the copy's
        return copy

    # Dicts ----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: every field, then the `computed` properties."""
        out = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out.update((name, plain(getattr(self, name))) for name in type(self).computed)
        return out

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        """Read a record from a mapping (a `to_dict()`, a JSON object, a TOML table)."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise cls.error(f"expected a table of fields, not {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        known = {}
        for key, value in data.items():
            if key in fields:
                known[key] = value
            elif key not in cls.computed and cls.extra == "forbid":
                raise cls.error(f"{key}: unknown field{did_you_mean(str(key), fields)}")
        for name, field in fields.items():
            if name not in known and field.default is dataclasses.MISSING \
                    and field.default_factory is dataclasses.MISSING:
                raise cls.error(f"{name}: required")
        return cls(**known)


def plain(value: Any) -> Any:
    """`value` as JSON types: records as dicts, tuples as lists, a non-finite float as None."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# Checkers, one per annotation ---------------------------------------------------------------------------------
def checker(hint: Any, exact_integers: bool = False) -> Check:
    """The check for one annotation (a resolved type hint); `exact_integers`: no float passes as an integer."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return _anything
    if origin in (Union, types.UnionType):
        return _union([checker(a, exact_integers) for a in args if a is not type(None)], optional=type(None) in args)
    if origin is Literal:
        return _literal(args)
    if origin is ClassVar:
        return _anything
    if origin in (tuple, list):
        return _sequence(origin, [checker(a, exact_integers) for a in args if a is not Ellipsis])
    if origin is dict:
        return _mapping(checker(args[1], exact_integers) if args else _anything)
    if hint is int and exact_integers:
        return _exact_integer
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record(hint)
    if isinstance(hint, type):
        return _instance(hint)
    raise TypeError(f"no record check for the annotation {hint!r}")


def _anything(value: Any) -> Any:
    return value


def _integer(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"must be an integer, not {value!r}")


def _exact_integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"must be an integer, not {value!r}")


def _number(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"must be a number, not {value!r}")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, not {value!r}")


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"must be a string, not {value!r}")


_SCALARS: dict[Any, Check] = {int: _integer, float: _number, bool: _boolean, str: _string}


def _union(checks: list[Check], optional: bool) -> Check:

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        errors = []
        for one in checks:
            try:
                return one(value)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{value!r} is none of the accepted types")

    return checks[0] if len(checks) == 1 and not optional else check


def _literal(choices: tuple[Any, ...]) -> Check:
    kinds = {type(c) for c in choices}
    words = ", ".join(str(c) for c in choices)

    def check(value: Any) -> Any:
        if type(value) in kinds and value in choices:
            return value
        hint = did_you_mean(value, map(str, choices)) if isinstance(value, str) else ""
        raise ValueError(f"{value!r} is not one of: {words}{hint}")

    return check


def _sequence(origin: type, items: list[Check]) -> Check:
    if len(items) > 1:
        raise TypeError("records take tuple[T, ...], not fixed-length tuples")
    item = items[0] if items else _anything

    def check(value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list, not {value!r}")
        return origin(item(v) for v in value)

    return check


def _mapping(item: Check) -> Check:
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"must be a table of names to values, not {value!r}")
        out = {}
        for key, v in value.items():
            try:
                out[key] = item(v)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return out

    return check


def _record(cls: type[Record]) -> Check:
    def check(value: Any) -> Record:
        if isinstance(value, cls):
            return value
        try:
            return cls.from_dict(value)
        except Exception as exc:
            if isinstance(exc, cls.error):
                raise ValueError(str(exc)) from None
            raise

    return check


def _instance(cls: type) -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        raise ValueError(f"must be a {cls.__name__}, not {value!r}")

    return check
