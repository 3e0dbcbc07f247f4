"""Run the real training code under `FakeTensorMode`, and the patches that keep it on the real run's path.

A FakeTensor has a shape, dtype and device but no data, so a 70B step costs no memory and a few seconds. Library
code that *reads* data, or asks "am I being traced?", would take another path than a real run. Every patch
below makes the traced run allocate exactly what the real run allocates (tests/measure/test_trace_matches_real.py):

1. `transformers.masking_utils.find_packed_sequence_indices`: a real run reads the position ids, sees one
   sequence per row and returns None (no mask: sdpa runs with `is_causal=True`). On FakeTensors its
   `is_tracing()` check is true and it returns the packed-sequence index tensor, from which transformers builds
   an explicit [batch, 1, seq, seq] mask that a real run never builds. Patched: run the original, then the
   comparison a real run makes (so the same temporaries are allocated), and return None.
2. `bitsandbytes.functional.create_dynamic_map` calls `.tolist()` on tensors (data-dependent). The 8-bit
   optimizers call it in `__init__` (`fill_qmap`). Patched: the values are computed once on real tensors and
   the map is returned as `torch.tensor(values)`, which allocates the same 256 fp32 values as the real function.
3. `bitsandbytes.functional.name2qmap["dynamic"]`, bitsandbytes' process-wide cache of that map, which
   double quantization reads: it holds a real tensor, so during tracing it holds a fake copy. In both modes the
   cache is filled before measuring (`warm_caches`), so a run's bytes do not depend on what ran before it in
   the process; the 1 KiB it holds is not counted.
4. `torch.utils.swap_tensors`: `nn.Module._apply` (behind `module.to(...)`) always *swaps* FakeTensor
   parameters, and `swap_tensors` refuses when either tensor carries a weakref, which fake Parameters often
   do (FakeTensorMode's bookkeeping; which one depends on what ran before), so `module.to(device, dtype)`
   fails under tracing. peft calls it for every adapter (`_move_adapter_to_device_of_base_layer`). Patched:
   for fake tensors, do what `_apply` does for a real CPU/CUDA parameter, `param.data = new` (the new tensor
   is allocated, the old storage freed: the same bytes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vramplan.errors import MeasurementError


def warm_caches(model_type: str | None = None) -> None:
    """Import the stack and fill bitsandbytes' dynamic-map cache now, before anything is measured or faked.

    Imports make tensors (peft's LoHa default arguments are `torch.tensor(1)`): made under the tracker they
    would be counted once per process, made under FakeTensorMode they would be fake forever.
    """
    try:
        import bitsandbytes.functional as F
        import peft  # noqa: F401
        import peft.tuners.lora.bnb  # noqa: F401
        from transformers import AutoModelForCausalLM, masking_utils  # noqa: F401
    except ImportError as exc:
        raise MeasurementError(f"measure: {exc.name} is not installed; pip install 'vramplan[measure]'") from None

    if model_type is not None:
        from transformers import AutoConfig

        with contextlib.suppress(KeyError, ValueError):  # build_model reports bad configs
            AutoModelForCausalLM._model_mapping[type(AutoConfig.for_model(model_type))]  # imports modeling_<type>
    if "dynamic" not in F.name2qmap:
        F.name2qmap["dynamic"] = F.create_dynamic_map()


@contextlib.contextmanager
def fake_session(model_type: str | None = None) -> Iterator[object]:
    """`FakeTensorMode` plus the patches above; yields the mode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    warm_caches(model_type)
    with FakeTensorMode() as mode, _patched_masks(), _patched_bnb_maps(mode), _patched_swap():
        yield mode


@contextlib.contextmanager
def _patched_masks() -> Iterator[None]:
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices

    def unpacked(position_ids: torch.Tensor) -> None:
        mask = original(position_ids)
        if mask is not None:
            (mask[:, -1] == 0).all()  # the real run's check, for its temporaries
        return None

    masking_utils.find_packed_sequence_indices = unpacked
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


@contextlib.contextmanager
def _patched_bnb_maps(mode) -> Iterator[None]:
    import bitsandbytes.functional as F
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    original = F.create_dynamic_map
    values: dict[tuple, list[float]] = {}

    def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
        key = (signed, max_exponent_bits, total_bits)
        if key not in values:
            with unset_fake_temporarily():
                values[key] = original(*key).tolist()
        return torch.tensor(values[key], dtype=torch.float32)

    for signed in (True, False):  # what the 8-bit optimizers ask for, computed before anything is measured
        dynamic_map(signed)
    cached = F.name2qmap["dynamic"]
    F.create_dynamic_map = dynamic_map
    F.name2qmap["dynamic"] = mode.from_tensor(cached)
    try:
        yield
    finally:
        F.create_dynamic_map = original
        F.name2qmap["dynamic"] = cached


@contextlib.contextmanager
def _patched_swap() -> Iterator[None]:
    from torch._subclasses.fake_tensor import FakeTensor

    original = torch.utils.swap_tensors

    def swap_or_set_data(t1: torch.Tensor, t2: torch.Tensor) -> None:
        if isinstance(t1, FakeTensor) and isinstance(t2, FakeTensor):
            with torch.no_grad():
                t1.data = t2
            return
        original(t1, t2)

    torch.utils.swap_tensors = swap_or_set_data
    try:
        yield
    finally:
        torch.utils.swap_tensors = original
