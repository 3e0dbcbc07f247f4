"""Trace a step with Liger kernels (`plan.liger`) on the CPU: Liger's own Python wrappers on their CUDA path.

Liger's kernels are Triton kernels, which need a GPU. Everything they *allocate* is allocated by the Python
around them (ops/rms_norm.py `rms_norm_forward`, ops/swiglu.py, ops/rope.py, ops/fused_linear_cross_entropy.py:
`torch.empty`, `zeros_like`, the logits buffer); the kernels only read and write those buffers in place. So a
trace that launches every Triton kernel as a no-op allocates what the CUDA run allocates (the numbers in the
tensors are garbage, which no byte count reads). `liger_session` patches, while the step runs:

1. `triton.runtime.jit.KernelInterface.__getitem__` (what `kernel[grid](...)` calls): a launcher that does
   nothing, for every `@triton.jit` and `@triton.autotune` kernel.
2. `FakeTensor.item` and `torch.equal` on FakeTensors: `fused_linear_cross_entropy_forward` reads
   `target_mask.sum().item()` (the count of scored tokens, only a kernel argument) and its backward asks
   `torch.equal(grad_output, 1.0)` to skip an in-place scaling: both read data a FakeTensor has not. They answer
   1 and False (the scaling kernel is a no-op anyway).
3. `_can_use_mm_out` (fused_linear_cross_entropy.py): False off CUDA; here the CUDA answer (input and weight of
   one dtype, autocast agreeing), so the one reused logits buffer of the CUDA run is what is traced.
Before anything is measured, every op's backends are discovered (`registry._discover`): on the first call of an op
Liger imports its backends and logs each one that fails (`logger.warning(..., e)`) with the exception as an
argument, whose traceback holds the frames of that forward (its tensors); a handler that keeps records (pytest's
log capture) would keep them alive through the measured step.
Not reproducible on the CPU (left out of the traced plans): the weight-gradient accumulation of a trainable
lm_head (`torch.addmm(..., out=grad_weight)` is taken only on a CUDA device of capability >= 8; the CPU takes
the legacy path with a weight-sized temporary) and the `[sm_count, width]` partial norm gradient (`sm_count` is 1
on the CPU).

`apply_liger(model, plan)` is what transformers 5 `Trainer.__init__` does with `use_liger_kernel=True`
(`integrations.liger.apply_liger_kernel` -> `_apply_liger_kernel_to_instance`), with TRL's
`fused_linear_cross_entropy=False` for the `trl-*` trainers. Liger patches module globals of the modeling file
(`modeling_llama.apply_rotary_pos_emb`, the norm and MLP classes): the session restores them afterwards, so later
traces in the process run the eager code.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch

from vramplan.plan import TrainingPlan


def apply_liger(model: torch.nn.Module, plan: TrainingPlan) -> None:
    from transformers.integrations.liger import apply_liger_kernel

    config = {"fused_linear_cross_entropy": False} if plan.trainer.startswith("trl-") else {}
    apply_liger_kernel(model, config)


@contextlib.contextmanager
def liger_session(model_type: str | None) -> Iterator[None]:
    """The patches of the module docstring; enter it before the fake session (Liger's imports make tensors)."""
    import liger_kernel.ops.fused_linear_cross_entropy as flce
    import liger_kernel.transformers  # noqa: F401 - imports every wrapper before anything is faked
    from liger_kernel.backends import registry
    from torch._subclasses.fake_tensor import FakeTensor
    from triton.runtime import jit

    for op in list(registry._DISCOVERY_MAP):  # import every backend now (see the module docstring)
        registry._discover(op)
    modeling = _modeling_module(model_type)
    saved_globals = dict(vars(modeling)) if modeling is not None else {}
    launch, can_mm_out, equal = jit.KernelInterface.__getitem__, flce._can_use_mm_out, torch.equal
    had_item = "item" in vars(FakeTensor)

    def mm_out(_input: torch.Tensor, weight: torch.Tensor) -> bool:  # `_can_use_mm_out` minus the device test
        if _input.dtype != weight.dtype or torch.is_grad_enabled():
            return False
        return not torch.is_autocast_enabled("cpu") or _input.dtype == torch.get_autocast_dtype("cpu")

    jit.KernelInterface.__getitem__ = lambda self, grid: (lambda *args, **kwargs: None)
    flce._can_use_mm_out = mm_out
    FakeTensor.item = lambda self: 1
    torch.equal = lambda a, b: False if isinstance(a, FakeTensor) or isinstance(b, FakeTensor) else equal(a, b)
    try:
        yield
    finally:
        jit.KernelInterface.__getitem__ = launch
        flce._can_use_mm_out = can_mm_out
        torch.equal = equal
        if not had_item:
            del FakeTensor.item
        if modeling is not None:
            for name in [n for n in vars(modeling) if n not in saved_globals]:
                delattr(modeling, name)
            for name, value in saved_globals.items():
                if vars(modeling).get(name) is not value:
                    setattr(modeling, name, value)


def _modeling_module(model_type: str | None):
    if not model_type:
        return None
    try:
        return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except ImportError:
        return None
