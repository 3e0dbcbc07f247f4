"""All rendering, in one place: rich tables for the CLI, plain text for the listings, and JSON.

Every renderer takes the `Console` (or text stream) to print on, so tests can record output at a fixed width,
and reads typed results (`MemoryEstimate`, `TrainingPlan`): no string-keyed lookups. Importing this package
imports neither rich nor the records (rich loads when a table is drawn; results are typed under TYPE_CHECKING).

    plan_words   the one description of a plan (and the engine names, from `vramplan.vocab`)
    estimate     `estimate`: the component table, the phases, the GPU verdict; `estimate --json`
    compare      `compare`: full vs LoRA vs QLoRA, and each method's served model
    advice       `suggest`: the plans that fit, the reasons in words, the knobs, the nearest options; its JSON
    calibration  `calibrate` and `calibrations`: measured against estimated
    inference    `infer`, `infer --compare`, `merge`, and `check`'s reading of a config
    listing      `models` and `gpus`: plain-text tables
"""

from __future__ import annotations

import sys

# name -> the submodule that owns it; imported on first use, so a listing never loads the other renderers
_OWNERS = {
    "advice_json": "advice", "render_advice": "advice",
    "render_calibration": "calibration", "render_calibrations": "calibration",
    "render_compare": "compare",
    "estimate_json": "estimate", "render_estimate": "estimate",
    "render_infer": "inference", "render_infer_compare": "inference", "render_merge": "inference",
    "render_reading": "inference",
    "render_gpus": "listing", "render_models": "listing",
}
__all__ = ["print_json", *_OWNERS]


def __getattr__(name: str) -> object:
    if name not in _OWNERS:
        raise AttributeError(f"module 'vramplan.report' has no attribute {name!r}")
    module = __import__(f"vramplan.report.{_OWNERS[name]}", fromlist=["_"])  # not importlib: 0.7 ms of a listing
    return getattr(module, name)


def print_json(obj: object) -> None:
    """JSON on stdout, no rich markup (so it pipes into jq)."""
    import json  # here: the listings' tables import this package and need no json (1.5 ms of `vramplan models`)

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
