"""Behaviour pinned across the redesign (issue 11): every number that `estimate`, `compare`, `suggest` and
`calibrate` printed for a fixed list of invocations before the redesign is printed after it
(tests/golden/outputs.json, recorded by tools/golden.py from commit 7576a44's code)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import golden  # noqa: E402

EXPECTED = json.loads(golden.GOLDEN.read_text())


@pytest.mark.parametrize("argv", golden.invocations(), ids=" ".join)
def test_estimate_and_compare_print_the_same_numbers(argv: list[str]) -> None:
    code, nums = golden.run(argv)
    got = {"exit": code, "numbers": nums}
    assert golden.same(EXPECTED[" ".join(argv)], got), golden.moved(EXPECTED[" ".join(argv)], got)


@pytest.mark.slow
@pytest.mark.parametrize("argv", [list(a) for a in golden.SLOW], ids=" ".join)
def test_suggest_and_calibrate_print_the_same_numbers(argv: list[str]) -> None:
    code, nums = golden.run(argv)
    got = {"exit": code, "numbers": nums}
    assert golden.same(EXPECTED[" ".join(argv)], got), golden.moved(EXPECTED[" ".join(argv)], got)
