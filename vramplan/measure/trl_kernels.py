"""TRL's CUDA paths as the CPU trace runs them (trl_trace.py, eval_trace.py): Triton launches that allocate
nothing become no-ops, so what is traced is what the CUDA path allocates (the Python wrappers' buffers); and
transformers' own packed-sequence detection for a packed batch. Context managers; torch, TRL and transformers are
imported when one is entered."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator


@contextlib.contextmanager
def trl_loss_kernel() -> Iterator[None]:
    """TRL's `selective_log_softmax` on its CUDA path (trl/kernels/logprob_entropy.py): `_supports_trl_loss_kernel`
    asks for a CUDA device; the Triton launches do nothing (the kernels allocate nothing: the buffers are the
    Python wrapper's)."""
    import trl.trainer.utils as tu
    from triton.runtime import jit

    supports, launch = tu._supports_trl_loss_kernel, jit.KernelInterface.__getitem__
    tu._supports_trl_loss_kernel = lambda *args, **kwargs: True
    jit.KernelInterface.__getitem__ = lambda self, grid: (lambda *args, **kwargs: None)
    try:
        yield
    finally:
        tu._supports_trl_loss_kernel, jit.KernelInterface.__getitem__ = supports, launch


def packed_rows() -> contextlib.AbstractContextManager:
    """transformers' own `find_packed_sequence_indices` while the step runs (trl_trace.py's module docstring:
    `packing`). Call it before the tracing session patches it: the function captured here, at the call, is the
    library's."""
    from transformers import masking_utils

    library = masking_utils.find_packed_sequence_indices

    @contextlib.contextmanager
    def run() -> Iterator[None]:
        patched = masking_utils.find_packed_sequence_indices
        masking_utils.find_packed_sequence_indices = library
        try:
            yield
        finally:
            masking_utils.find_packed_sequence_indices = patched

    return run()


@contextlib.contextmanager
def triton_tiles() -> Iterator[None]:
    """Run TRL's `ChunkedLogProbFunction` on its CUDA path (trl/kernels/chunked_logprob.py, TRL 1.16).

    On CUDA the tile folds are Triton kernels (`_forward_kernel`, `_backward_kernel`) that read the bf16 tile and
    write in place into buffers the function allocated: they allocate no tensor. `_addmm_fp32` is one
    `torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)`: no tensor either. On CPU both fall back to torch
    ops with fp32 temporaries of the tile's size (`_forward_tile`, `_backward_tile`, `a.float()`), which no GPU run
    allocates. Patched here: the kernels are launched as no-ops, so what is traced is what the CUDA path allocates
    (the buffers, the tiles, the gradients). The token selection of `add_fused_lm_head` still takes its non-Triton
    branch (every position scored: `hidden[mask]` needs the data); with every label valid it scores as many
    tokens as the CUDA branch.
    """
    import trl.trainer.utils  # noqa: F401 - binds the real `_use_triton` for the token selection first
    from trl.kernels import chunked_logprob as ck

    class _Launcher:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    saved = {k: getattr(ck, k, None) for k in ("_use_triton", "_forward_kernel", "_backward_kernel", "triton",
                                               "_addmm_fp32")}
    ck._use_triton = lambda device: True
    ck._forward_kernel = ck._backward_kernel = _Launcher()
    ck.triton = types.SimpleNamespace(cdiv=lambda a, b: -(-a // b))
    ck._addmm_fp32 = lambda acc, a, b: None
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                delattr(ck, k)
            else:
                setattr(ck, k, v)
