"""Measure peft's `merge_and_unload` under the live-bytes tracker, for checking `vramplan.merge`.

The model is built from a config with random weights (`measure.generate.build_for_inference`: 4-bit through
transformers' bitsandbytes path for the `4bit` method), a LoRA adapter attached by `get_peft_model` (fp32), its
weights registered, then `merge_and_unload()` runs under the tracker. On CPU, peft's 4-bit merge moves the
merged fp32 weight `.to("cpu")` and back `.to(weight.device)` without copying (same device), so the GPU's copy of
it is absent here: the plan checked against a CPU run is `MergePlan(device="cpu")`, a merge on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vramplan.measure.tracker import MemoryTracker
from vramplan.merge import MergePlan


@dataclass(frozen=True)
class MergeMeasurement:
    weights_bytes: int  # base and adapter, registered before merging
    peak_bytes: int  # weights included
    after_bytes: int  # live after merge_and_unload (the merged model)


def measure_merge(config: dict, plan: MergePlan, seed: int = 0) -> MergeMeasurement:
    from vramplan.inference import make_inference_plan
    from vramplan.measure.generate import build_for_inference

    torch.manual_seed(seed)
    iplan = make_inference_plan(quant="nf4" if plan.method == "4bit" else "none", rank=plan.rank,
                                targets=plan.targets, dtype=plan.dtype, quant_blocksize=plan.quant_blocksize,
                                double_quant=plan.double_quant)
    model = build_for_inference(config, iplan, "cpu")
    tensors = [*model.parameters(), *model.buffers()]
    for m in model.modules():  # 4-bit layers: the quant state's absmax/code tensors are not parameters
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        if state is not None:
            tensors += [t for t in (state.absmax, state.code) if t is not None]
            if state.state2 is not None:
                tensors += [state.state2.absmax, state.state2.code, state.offset]
    with torch.no_grad(), MemoryTracker() as tracker:
        weights = tracker.register(tensors, "weights")
        del tensors  # the adapter dies with its LoRA modules
        merged = model.merge_and_unload()
        peak = tracker.peak_bytes
        del model
        after = tracker.current_bytes
    del merged
    return MergeMeasurement(weights_bytes=weights, peak_bytes=peak, after_bytes=after)
