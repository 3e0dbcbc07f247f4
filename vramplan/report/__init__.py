"""All rendering, in one place: rich tables for the CLI, plain text for the listings, and JSON.

Every renderer takes the `Console` (or text stream) to print on, so tests can record output at a fixed width,
and reads typed results (`MemoryEstimate`, `TrainingPlan`): no string-keyed lookups. Importing this package
imports neither rich nor pydantic (rich loads when a table is drawn; results are typed under TYPE_CHECKING).

    plan_words   the one description of a plan (and the engine names, from `vramplan.vocab`)
    estimate     `estimate`: the component table, the phases, the GPU verdict; `estimate --json`
    compare      `compare`: full vs LoRA vs QLoRA, and each method's served model
    listing      `models` and `gpus`: plain-text tables
"""

from __future__ import annotations

import json
import sys

from vramplan.report.compare import render_compare
from vramplan.report.estimate import estimate_json, render_estimate
from vramplan.report.listing import render_gpus, render_models

__all__ = ["estimate_json", "print_json", "render_compare", "render_estimate", "render_gpus", "render_models"]


def print_json(obj: object) -> None:
    """JSON on stdout, no rich markup (so it pipes into jq)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
