"""vramplan.record: strict types, one-line errors, JSON round trips, copies (checked and derived)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, field
from typing import Literal

import pytest

from vramplan.errors import InputError, PlanError, RecordError
from vramplan.record import Record


class Inner(Record):
    count: int = 1
    share: float | None = None
    kind: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()


class Outer(Record):
    error = PlanError
    computed = ("total",)

    inner: Inner
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.inner.count + sum(self.parts.values())

    def _validate(self) -> None:
        if self.total < 0:
            raise ValueError("the total is negative: give sizes of 0 or more")


@pytest.mark.parametrize(("fields", "message"), [
    ({"count": True}, "count: must be an integer, not True"),  # a bool is not a count
    ({"count": "3"}, "count: must be an integer, not '3'"),  # a string is not a number
    ({"count": 2.5}, "count: must be an integer, not 2.5"),
    ({"share": "0.5"}, "share: must be a number, not '0.5'"),
    ({"share": False}, "share: must be a number, not False"),
    ({"kind": "c"}, "kind: 'c' is not one of: a, b"),
    ({"names": ["x", 1]}, "names: must be a string, not 1"),
    ({"names": "xy"}, "names: must be a list, not 'xy'"),
])
def test_strict_types_fail_in_one_line(fields, message):
    with pytest.raises(RecordError) as err:
        Inner(**fields)
    assert str(err.value) == message and "\n" not in message
    assert isinstance(err.value, InputError)  # the CLI's exit code 2


def test_conversions_a_reader_expects():
    inner = Inner(count=2.0, share=1, names=["x"])
    assert (inner.count, type(inner.count), inner.share, type(inner.share), inner.names) == (2, int, 1.0, float, ("x",))


def test_nested_records_read_mappings_and_errors_name_the_path():
    outer = Outer(inner={"count": 3}, parts={"x": 4})
    assert isinstance(outer.inner, Inner) and outer.total == 7
    with pytest.raises(PlanError, match=r"^inner: count: must be an integer, not 'x'$"):
        Outer(inner={"count": "x"})
    with pytest.raises(PlanError, match=r"^parts: x: must be an integer, not 'y'$"):
        Outer(inner=Inner(), parts={"x": "y"})
    with pytest.raises(PlanError, match="the total is negative"):
        Outer(inner=Inner(), parts={"x": -5})


def test_from_dict_refuses_unknown_and_missing_fields_and_skips_computed_ones():
    with pytest.raises(RecordError, match=r"^cont: unknown field \(did you mean count\?\)$"):
        Inner.from_dict({"cont": 1})
    with pytest.raises(PlanError, match="^inner: required$"):
        Outer.from_dict({})
    with pytest.raises(PlanError, match="expected a table of fields, not list"):
        Outer.from_dict([1])
    outer = Outer(inner=Inner(count=2, names=("a",)), parts={"x": 1})
    data = outer.to_dict()
    assert data == {"inner": {"count": 2, "share": None, "kind": "a", "names": ["a"]}, "parts": {"x": 1}, "total": 3}
    assert Outer.from_dict(data) == outer


def test_frozen_replace_checks_and_derive_does_not():
    inner = Inner()
    with pytest.raises(FrozenInstanceError):
        inner.count = 3
    assert inner.replace(count=4).count == 4 and inner.replace() is inner
    with pytest.raises(RecordError):
        inner.replace(count="4")
    view = inner.derive(count=10**9)
    assert view.count == 10**9 and inner.count == 1 and type(view) is Inner
    with pytest.raises(TypeError):
        inner.derive(nope=1)


def test_non_finite_floats_dump_as_null():
    assert Inner(share=float("inf")).to_dict()["share"] is None
