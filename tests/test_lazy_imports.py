"""The estimator loads the modules of optional features only for the plans that use them (issue 10, "Fast where
users feel it"): a plain estimate leaves them out of `sys.modules`, and each plan that needs one loads it. Run in
fresh interpreters (the test process has imported everything already); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

# module -> a plan (make_plan options) on a preset that needs it; in an order where no plan needs a later module
OPTIONAL = {
    "vramplan.estimator.offloading": ("llama2-7b", {"method": "lora", "trainer": "trl-sft",
                                                    "activation_offloading": True}),
    "vramplan.estimator.moe": ("mixtral-8x7b", {"method": "qlora"}),
    "vramplan.estimator.experts_v4": ("mixtral-8x7b", {"method": "qlora", "transformers": 4}),
    "vramplan.estimator.int8": ("llama2-7b", {"method": "lora", "load_in_8bit": True}),
    "vramplan.estimator.dora": ("llama2-7b", {"method": "lora", "use_dora": True}),
    "vramplan.estimator.evaluation": ("llama2-7b", {"method": "qlora", "eval_batch": 1}),
    "vramplan.estimator.engines.pricing": ("llama2-7b", {"method": "lora", "gpus": 2, "sharding": "ddp"}),
}
# loaded by other paths (a GPU, sharding, the allocator replay), never by an estimate without them
NEVER = ("vramplan.estimator.allocator", "vramplan.estimator.replay", "vramplan.estimator.partition",
         "vramplan.estimator.step_events", "vramplan.estimator.engines.ddp_fsdp",
         "vramplan.estimator.engines.deepspeed", "vramplan.measure")

CHILD = """
import json, sys
before = set(sys.modules)
from vramplan.api import estimate
from vramplan.plan import make_plan
out = []
for model, options in json.loads(sys.argv[1]):  # the modules each estimate loads (the first: and the imports)
    estimate(model, make_plan(**options))
    out.append(sorted(m for m in set(sys.modules) - before if m.startswith("vramplan")))
    before = set(sys.modules)
print(json.dumps(out))
"""


def loaded_by(*plans: tuple[str, dict]) -> list[set[str]]:
    """The vramplan modules each plan's estimate loads, run in turn in one fresh interpreter (the first plan's
    include those `vramplan.api` loads)."""
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(plans)], capture_output=True, text=True,
                         check=True)
    return [set(m) for m in json.loads(out.stdout)]


def test_a_plain_estimate_loads_no_optional_module():
    [loaded] = loaded_by(("llama2-7b", {"method": "qlora"}))
    assert "vramplan.estimator.single_gpu" in loaded  # the check sees the estimator's modules
    unexpected = sorted(m for m in (*OPTIONAL, *NEVER) if m in loaded)
    assert not unexpected, f"a plain llama2-7b QLoRA estimate imported {unexpected}"


def test_each_optional_module_is_loaded_by_the_plan_that_needs_it():
    loaded = loaded_by(("llama2-7b", {"method": "qlora"}), *OPTIONAL.values())[1:]
    missing = [(module, plan) for (module, plan), new in zip(OPTIONAL.items(), loaded) if module not in new]
    assert not missing, missing
