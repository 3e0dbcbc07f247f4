"""The CUDA bookkeeping of cuda_memory.py: per-phase peaks, the context, paged states, OOM as a result.

Without a GPU, `torch.cuda`'s statistics functions are replaced by a scripted allocator, so the arithmetic and
the order of calls are checked; the GPU-only test at the end measures a real step when CUDA is there.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramplan.measure import cuda_memory  # noqa: E402
from vramplan.measure.cuda_memory import CudaMemory, StepOutOfMemory, paged_bytes  # noqa: E402

GiB = 2**30


class FakeAllocator:
    """What torch.cuda reports: `allocated`/`reserved` now, peaks since the last reset, a device of 80 GiB."""

    def __init__(self, initialized: bool = False, nvml_used: int | None = GiB // 4) -> None:
        self.allocated = self.reserved = self.max_allocated = self.max_reserved = 0
        self.initialized = initialized
        self.nvml_used = nvml_used
        self.context = 500 * 2**20

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(cuda, "mem_get_info", self.mem_get_info)
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", self.reset)
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: self.reserved)
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self.max_allocated)
        monkeypatch.setattr(cuda, "max_memory_reserved", lambda device=None: self.max_reserved)
        if self.nvml_used is None:
            monkeypatch.delattr(cuda, "device_memory_used", raising=False)
        else:
            monkeypatch.setattr(cuda, "device_memory_used", lambda device=None: self.nvml_used)
        monkeypatch.setattr(cuda_memory, "_CONTEXT_BYTES", {})

    def mem_get_info(self, device=None):
        self.initialized = True
        return 80 * GiB - (self.nvml_used or 0) - self.context, 80 * GiB

    def reset(self, device=None) -> None:
        self.max_allocated, self.max_reserved = self.allocated, self.reserved

    def run(self, peak: int, end: int, reserved: int) -> None:
        """A phase that rises to `peak` live bytes and ends at `end`, holding `reserved`."""
        self.max_allocated = max(self.max_allocated, peak)
        self.allocated = end
        self.reserved = self.max_reserved = max(self.reserved, reserved)


def test_phase_peaks_reset_between_phases_and_steps(monkeypatch):
    fake = FakeAllocator()
    fake.install(monkeypatch)
    cuda = CudaMemory("cuda:0")
    fake.run(peak=6 * GiB, end=4 * GiB, reserved=6 * GiB)  # loading: a transient, then the model
    cuda.mark_load()
    for step in range(2):
        cuda.new_step()
        for micro_batch in range(2):  # gradient accumulation: the max over micro-batches
            with cuda.phase("forward"):
                fake.run(peak=(5 + micro_batch) * GiB, end=4 * GiB + GiB // 2, reserved=7 * GiB)
            with cuda.phase("backward"):
                fake.run(peak=5 * GiB + step, end=4 * GiB + GiB // 2, reserved=7 * GiB)
        with cuda.phase("optimizer"):
            fake.run(peak=4 * GiB + GiB // 2, end=4 * GiB, reserved=7 * GiB)
    assert cuda.allocated == {"load": 4 * GiB, "forward": 6 * GiB, "backward": 5 * GiB + 1,
                              "optimizer": 4 * GiB + GiB // 2}
    assert cuda.reserved == {"load": 6 * GiB, "forward": 7 * GiB, "backward": 7 * GiB, "optimizer": 7 * GiB}


@pytest.mark.parametrize("nvml_used, expected", [(GiB // 4, 500 * 2**20), (None, 500 * 2**20 + 0)])
def test_context_is_measured_once_before_the_first_cuda_call(monkeypatch, nvml_used, expected):
    fake = FakeAllocator(nvml_used=nvml_used)
    fake.install(monkeypatch)
    assert CudaMemory("cuda").context_bytes == expected
    fake.context = 0  # a second measurement in the same process reuses the first
    assert CudaMemory("cuda:0").context_bytes == expected


def test_context_is_unknown_when_cuda_was_initialised_before(monkeypatch):
    FakeAllocator(initialized=True).install(monkeypatch)
    assert CudaMemory("cuda").context_bytes is None


def test_out_of_memory_becomes_a_result(monkeypatch):
    fake = FakeAllocator()
    fake.install(monkeypatch)
    cuda = CudaMemory("cuda")
    with pytest.raises(StepOutOfMemory) as caught, cuda.out_of_memory_as_result(lambda: "backward"):
        with cuda.phase("backward"):
            fake.run(peak=23 * GiB, end=23 * GiB, reserved=23 * GiB + 2**29)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.95 GiB\nmore detail")
    exc = caught.value
    assert (exc.phase, exc.allocated_bytes, exc.reserved_bytes) == ("backward", 23 * GiB, 23 * GiB + 2**29)
    assert exc.message == "CUDA out of memory. Tried to allocate 1.95 GiB"
    assert "backward" not in cuda.allocated  # a phase that failed has no peak


def test_paged_bytes_counts_managed_states_only():
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([param], lr=0.1)
    paged = torch.zeros(1000, dtype=torch.uint8)
    paged.is_paged = True  # what bitsandbytes.functional.get_paged marks
    optimizer.state[param] = {"state1": paged, "absmax1": torch.zeros(4), "step": 3}
    assert paged_bytes(optimizer) == 1000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_step_reports_the_allocator():
    pytest.importorskip("peft")
    from vramplan.measure.trainer import measure_step
    from vramplan.plan import make_plan

    tiny = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    step = measure_step(tiny, make_plan(method="qlora", seq=32, batch=2), device="cuda")
    assert step.allocated_phases["backward"] >= step.backward_peak_bytes  # rounding and kernel temporaries
    assert step.reserved_bytes >= max(step.allocated_phases.values())
    assert step.paged_bytes == 0  # LoRA tensors of a tiny model stay below bitsandbytes' 1e5-element paging
