"""The search (vramplan.search, vramplan.search_space): which methods a request's pinned flags allow, read from the
plan's field groups (one owner, vramplan.vocab), and the bisection that sizes a cell."""

from __future__ import annotations

import pytest

from vramplan.errors import PlanError
from vramplan.hardware import resolve_gpu
from vramplan.models import resolve_model
from vramplan.search_space import Probe, Request


def probe(pinned: dict, methods: tuple[str, ...] = ()) -> Probe:
    return Probe(Request(model=resolve_model("llama-7b"), gpu=resolve_gpu("rtx4090"), pinned=pinned, methods=methods))


@pytest.mark.parametrize("pinned, methods", [
    ({}, ("full", "lora", "qlora")),
    ({"quant_storage": "bf16"}, ("qlora",)),  # aborted with "--quant-storage applies to method qlora only"
    ({"double_quant": False}, ("qlora",)),
    ({"rank": 16}, ("lora", "qlora")),
    ({"modules_to_save": "lm_head"}, ("lora", "qlora")),
    ({"load_in_8bit": True}, ("lora",)),
    ({"load_in_8bit": True, "kbit_upcast": False}, ("lora",)),
])
def test_every_method_only_pin_narrows_the_search(pinned, methods):
    assert probe(pinned).methods == methods


def test_a_named_method_that_does_not_take_a_pinned_flag_is_a_one_line_error():
    with pytest.raises(PlanError, match="--quant-storage applies to method qlora only, not 'lora'"):
        probe({"quant_storage": "bf16"}, methods=("lora",))
    with pytest.raises(PlanError, match="--rank applies to lora/qlora"):
        probe({"rank": 16}, methods=("full",))


def test_every_plan_the_narrowed_search_builds_keeps_the_pinned_flag():
    p = probe({"quant_storage": "bf16"})
    plan = p.plan("qlora", ("default", 8), 1024, True, "paged_adamw_8bit", 1)
    assert (plan.method, plan.quant_storage) == ("qlora", "bf16")


@pytest.mark.slow
def test_suggest_with_a_qlora_only_pin_finds_qlora_plans(capsys):
    from vramplan.cli import main

    assert main(["suggest", "--model", "llama-7b", "--gpu", "rtx4090", "--quant-storage", "bf16", "--top", "1",
                 "--json"]) == 0
    assert '"quant_storage": "bf16"' in capsys.readouterr().out


@pytest.mark.parametrize("gallop", [False, True])
def test_last_true_is_the_largest_n_that_holds(gallop):
    from vramplan.search import last_true

    for lo, hi in ((0, 0), (0, 9), (1, 1024), (3, 100)):
        if gallop and lo == 0:
            continue  # galloping doubles from lo: it needs lo >= 1
        for edge in range(lo - 1, hi + 2):
            asked: list[int] = []

            def holds(n: int, edge: int = edge, asked: list = asked) -> bool:
                asked.append(n)
                return n <= edge

            want = None if edge < lo else min(edge, hi)
            assert last_true(holds, lo, hi, gallop=gallop) == want
            assert all(lo <= n <= hi for n in asked) and len(asked) <= 2 * (hi - lo + 1).bit_length() + 2


def test_first_true_is_the_smallest_n_that_holds():
    from vramplan.search import first_true

    for edge in range(1, 1030):
        assert first_true(lambda n, edge=edge: n >= edge, 2, 1024) == (max(edge, 2) if edge <= 1024 else None)
