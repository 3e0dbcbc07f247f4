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


def _record_classes() -> list[type[Record]]:
    """Every record the package defines (importing the modules that hold them, none of which needs torch)."""
    import importlib

    for name in ("vramplan.plan", "vramplan.estimator.result", "vramplan.models", "vramplan.hardware",
                 "vramplan.device", "vramplan.inference", "vramplan.merge", "vramplan.recommend", "vramplan.configs",
                 "vramplan.measure.records", "vramplan.measure.learning", "vramplan.measure.trainer"):
        importlib.import_module(name)
    found, todo = [], list(Record.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    mine = {c for c in found if c.__module__.startswith("vramplan.")}
    return sorted(mine, key=lambda c: (c.__module__, c.__qualname__))  # one order whatever was imported first


def test_every_record_refuses_any_garbage_with_an_input_error():
    """A stored row, a TOML profile, a config reading or a JSON plan may hold anything: whatever a mapping holds,
    reading it as any record gives the record or an InputError (exit 2), never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    classes = _record_classes()
    assert len(classes) >= 20
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=8))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(classes), st.data())
    def read(cls, data):
        names = list(cls.field_names())
        keys = st.one_of(st.sampled_from(names), st.text(max_size=8)) if names else st.text(max_size=8)
        given_fields = data.draw(st.dictionaries(keys, values, max_size=6))
        try:
            cls.from_dict(given_fields)
        except InputError:
            pass

    read()


def test_one_wrong_field_in_a_real_record_is_an_input_error():
    """A real plan, estimate, GPU profile and model spec with one field replaced by anything: read back, each is
    the record or an InputError, never another exception (and a record read back is checked again)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from vramplan.api import estimate
    from vramplan.hardware import resolve_gpu
    from vramplan.models import resolve_model
    from vramplan.plan import make_plan

    e = estimate("llama2-7b", make_plan(method="qlora"), gpu="rtx4090")
    real = [e, e.plan, e.components, resolve_gpu("a100-80gb"), resolve_model("mixtral-8x7b")]
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15), st.floats(), st.text(max_size=6))
    values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars,
                                                                                max_size=2))

    @settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(real), st.data())
    def mutate(record, data):
        fields = record.to_dict()
        fields[data.draw(st.sampled_from(type(record).field_names()))] = data.draw(values)
        try:
            again = type(record).from_dict(fields)
        except InputError:
            return
        assert type(again).from_dict(again.to_dict()) == again

    mutate()


def test_an_estimate_read_back_has_its_peak_phase_and_no_negative_size():
    """Found by the test above with random seeds: an estimate whose phases are empty read back, then failed on its
    own `peak_bytes`; a negative size read back as a 'fit'."""
    from vramplan.api import estimate
    from vramplan.estimator.result import MemoryEstimate
    from vramplan.plan import make_plan

    data = estimate("llama2-7b", make_plan(method="qlora"), gpu="rtx4090").to_dict()
    with pytest.raises(RecordError, match="peak_phase: 'backward' is not one of the phases"):
        MemoryEstimate.from_dict({**data, "phases": {}})
    with pytest.raises(RecordError, match="components: activations: -1 bytes: a size is never negative"):
        MemoryEstimate.from_dict({**data, "components": {**data["components"], "activations": -1}})
    with pytest.raises(RecordError, match="cuda_context_bytes: -5 bytes"):
        MemoryEstimate.from_dict({**data, "cuda_context_bytes": -5})
