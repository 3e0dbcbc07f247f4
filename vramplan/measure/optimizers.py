"""The optimizers a plan names, built the way the usual training scripts build them, and where their state lives.

State is created lazily on the first `step()` (torch and bitsandbytes alike), so it shows up in the optimizer
phase of step 1 and is live from then on:

- adamw: `torch.optim.AdamW(foreach=True)` (the CUDA default). State per param: `exp_avg`, `exp_avg_sq` in the
  param's dtype (bf16 params get bf16 states), plus a 0-dim fp32 `step`. The foreach path also allocates one
  transient copy of all second moments (`torch._foreach_sqrt(exp_avg_sqs)`) on top of the live gradients.
- adamw_fused: `torch.optim.AdamW(fused=True)`; the fused kernel runs on CPU too (torch >= 2.4) and has a fake
  kernel. Same state, no transient lists.
- adamw_8bit / paged_adamw_8bit / lion_8bit: `bitsandbytes.optim.{AdamW8bit, PagedAdamW8bit, Lion8bit}`.
  `__init__` builds two 256-entry fp32 quantization maps (`fill_qmap`, shared by all params). Per param with at
  least `min_8bit_size`=4096 elements: uint8 `state1` (and `state2` for Adam) + fp32 `absmax1`/`absmax2`
  (one per 256-element block) and references to the shared maps; smaller params get fp32 states
  (`Optimizer2State.init_state`). The update is one custom op (`optimizer_update_8bit_blockwise`), in place.
- paged_adamw_8bit / paged_adamw_32bit on CPU: bitsandbytes warns "Paged optimizers are not supported on CPU"
  and allocates ordinary tensors (`get_state_buffer`), so they measure as their non-paged versions. On CUDA,
  states of >= 1e5 elements come from `cudaMallocManaged` wrapped by `torch.frombuffer` as *CPU* tensors:
  `torch.cuda.memory_allocated()` does not count them and neither does the tracker.
- adafactor: `transformers.optimization.Adafactor(scale_parameter=False, relative_step=False, lr=...)`, what HF
  Trainer's `optim="adafactor"` builds. Factored second moment: fp32 row + column vectors for >= 2-D params,
  a full fp32 `exp_avg_sq` for 1-D ones, a 0-dim `RMS`; no first moment (beta1=None). It upcasts bf16/fp16
  grads and params to fp32 copies inside `step()`.
- sgd / sgd_momentum: `torch.optim.SGD(foreach=True[, momentum=0.9])`; momentum keeps one buffer per param.
"""

from __future__ import annotations

import torch

from vramplan.plan import TrainingPlan

LR = 1e-4


def build_optimizer(params: list[torch.nn.Parameter], plan: TrainingPlan) -> torch.optim.Optimizer:
    name = plan.optimizer or "adamw"
    if name in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit"):
        return _bnb_optimizer(name, params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=LR, foreach=True)
    if name == "adamw_fused":
        return torch.optim.AdamW(params, lr=LR, fused=True)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=LR, scale_parameter=False, relative_step=False)
    if name == "sgd":
        return torch.optim.SGD(params, lr=LR, foreach=True)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=LR, momentum=0.9, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}")  # TrainingPlan validation makes this unreachable


def _bnb_optimizer(name: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    cls = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "lion_8bit": bnb.optim.Lion8bit,
    }[name]
    return cls(params, lr=LR)
