"""`estimate`'s text: the component table lists typed components by name, in the model's order, at a fixed width."""

from __future__ import annotations

import io

from rich.console import Console

from vramplan.api import compare, estimate
from vramplan.plan import make_plan
from vramplan.report import render_compare, render_estimate
from vramplan.report.estimate import COMPONENT_LABELS
from vramplan.vocab import ENGINE_NAMES


def _text(render, *args) -> str:
    console = Console(file=io.StringIO(), width=120, record=True)
    render(console, *args)
    return console.export_text()


def test_component_rows_follow_the_model_and_name_the_engine():
    e = estimate("qwen2.5-0.5b", make_plan(method="full", gpus=2, sharding="zero3", offload="optimizer"),
                 gpu="rtx4090")
    text = _text(render_estimate, e)
    held = [k for k, v in e.components.items_bytes().items() if v]
    rows = [text.index(COMPONENT_LABELS[k]) for k in held]
    assert rows == sorted(rows) and held[-1] == "activations"
    assert ENGINE_NAMES["zero3"] in " ".join(text.split()) and "on each of 2 x rtx4090" in text


def test_compare_row_sums_the_weights_the_model_holds():
    rows = compare(["qwen2.5-0.5b"], lambda m: make_plan(method=m))
    text = _text(render_compare, rows, None)
    qlora = rows[2].components
    weights = (qlora.quantized_weights + qlora.quant_constants + qlora.double_quant_constants + qlora.base_weights
               + qlora.lora_adapters)
    assert f"{weights / 2**30:.2f}" in next(line for line in text.splitlines() if " qlora " in line)
