"""MemoryTracker against ground facts: known tensor sizes, frees, views, in-place ops, real and fake tensors.

Every expected number is a hand count: numel x element size (fp32 4, bf16 2, uint8 1, int64 8 bytes).
"""

from __future__ import annotations

import contextlib
import gc

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from vramplan.measure.tracker import MemoryTracker, summarize  # noqa: E402


@pytest.fixture(params=["real", "fake"])
def mode(request):
    """Run each test on real CPU tensors and under FakeTensorMode (no real memory)."""
    return FakeTensorMode if request.param == "fake" else contextlib.nullcontext


def test_counts_new_tensors_and_frees(mode):
    with mode(), MemoryTracker() as tr:
        a = torch.empty(1000)
        assert tr.current_bytes == 4000
        b = torch.zeros(10, 10, dtype=torch.bfloat16)
        c = torch.ones(7, dtype=torch.uint8)
        assert tr.current_bytes == 4000 + 200 + 7
        del a
        gc.collect()
        assert tr.current_bytes == 207
        del b, c
        assert tr.current_bytes == 0
        assert tr.peak_bytes == 4207


def test_views_share_storage(mode):
    with mode(), MemoryTracker() as tr:
        x = torch.empty(64, 32)
        views = [x.view(-1), x.t(), x[::2], x[3], x.detach(), x.data, x.reshape(32, 64), x.unsqueeze(0)]
        assert tr.current_bytes == 64 * 32 * 4
        del x
        assert tr.current_bytes == 64 * 32 * 4  # the views keep the storage alive
        del views
        assert tr.current_bytes == 0


def test_in_place_ops_allocate_nothing_and_out_of_place_ops_do(mode):
    with mode(), MemoryTracker() as tr:
        x = torch.zeros(100)
        x.add_(1).mul_(3)
        x[10:20] = 5.0
        torch.add(x, 1, out=x)
        assert tr.current_bytes == 400
        y = x + 1
        z = x.to(torch.bfloat16)
        same = x.to(torch.float32)  # no-op cast returns x itself
        assert tr.current_bytes == 400 + 400 + 200
        assert same.untyped_storage().nbytes() == 400
        del y, z


def test_peak_and_reset(mode):
    with mode(), MemoryTracker() as tr:
        a = torch.empty(1000)  # 4000
        b = torch.empty(2000)  # 8000
        del a
        c = torch.empty(500)  # 2000
        assert (tr.current_bytes, tr.peak_bytes) == (10000, 12000)
        tr.reset_peak()
        assert tr.peak_bytes == 10000
        d = torch.empty(250)  # 1000
        del d
        assert tr.peak_bytes == 11000
        del b, c


def test_register_counts_each_storage_once(mode):
    with mode():
        w = torch.empty(10, 10)
        bias = torch.empty(10)
        with MemoryTracker() as tr:
            assert tr.current_bytes == 0  # created before the mode: invisible until registered
            v = w.t()  # a view of an untracked tensor is not an allocation
            assert tr.current_bytes == 0
            assert tr.register([w, w.view(-1), v, bias]) == 440
            assert tr.register(w) == 0
            assert tr.current_bytes == tr.peak_bytes == 440
            del v
        del w, bias


def test_resize_in_place_is_followed(mode):
    with mode(), MemoryTracker() as tr:
        x = torch.empty(10)
        x.resize_(100)
        assert tr.current_bytes == 400
        del x
        assert tr.current_bytes == 0


def test_autograd_saved_tensors_stay_live_until_the_graph_dies(mode):
    with mode(), MemoryTracker() as tr:
        x = torch.ones(100, requires_grad=True)
        y = x.exp()  # ExpBackward saves its output
        loss = y.sum()
        del y
        assert tr.current_bytes == 400 + 400 + 4
        loss.backward()  # frees the saved exp output; x.grad (400) appears, the seed (4) dies
        assert tr.current_bytes == 400 + 400 + 4
        assert x.grad is not None
        del loss
        assert tr.current_bytes == 800


def test_phase_peak_snapshot_names_op_module_and_phase(mode):
    with mode():
        net = torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        with MemoryTracker(record=True) as tr:
            tr.name_modules(net)
            tr.register(list(net.parameters()), label="weights")
            x = torch.randn(4, 16)
            with tr.phase("forward"):
                out = net(x)
            snap = tr.peak_snapshot()
            assert sum(a.nbytes for a in snap) == tr.peak_bytes
            by_module = {a.module: a for a in snap if a.phase == "forward"}
            assert by_module["0"].nbytes == 4 * 32 * 4 and by_module["0"].op == "aten.mm"
            assert by_module["1"].op == "aten.relu"
            assert "2" not in by_module  # the peak is at ReLU: Linear 0's output dies before Linear 2 runs
            weights = (16 * 32 + 32 * 8 + 8) * 4
            assert dict((k, b) for k, b, _ in summarize(snap, "op"))["weights"] == weights
            assert tr.peak_bytes == weights + 4 * 16 * 4 + 2 * (4 * 32 * 4)
            last = [a for a in tr.live_allocations() if a.module == "2"]
            assert [(a.shape, a.dtype, a.op) for a in last] == [((4, 8), "float32", "aten.addmm")]
            del out


def test_backward_allocations_name_the_autograd_node(mode):
    with mode():
        lin = torch.nn.Linear(8, 8, bias=False)
        with MemoryTracker(record=True) as tr:
            x = torch.randn(2, 8)
            loss = lin(x).sum()
            with tr.phase("backward"):
                loss.backward()
            grads = [a for a in tr.live_allocations() if a.phase == "backward"]
            assert [(a.nbytes, a.module) for a in grads] == [(256, "backward:MmBackward0")]


def test_snapshots_need_record():
    with MemoryTracker() as tr:
        with pytest.raises(RuntimeError, match="record=True"):
            tr.peak_snapshot()


def test_tensors_from_python_data_are_counted(mode):
    with mode(), MemoryTracker() as tr:
        x = torch.tensor([1.0, 2.0, 3.0])  # lift_fresh: 12 bytes
        step = torch.tensor(0.0)  # 4 bytes, like torch.optim's step counters
        r = torch.arange(10.0)  # 40 bytes
        assert tr.current_bytes == 56
        del x, step, r
        assert tr.current_bytes == 0


def test_storage_resize_is_followed(mode):
    """FSDP2 frees and re-allocates unsharded parameters with `UntypedStorage.resize_`, which bypasses the
    dispatcher (`_fsdp_param.py: free_storage / alloc_storage`)."""
    with mode(), MemoryTracker(record=True) as tr:
        x = torch.empty(100)
        storage = x.untyped_storage()
        storage.resize_(0)
        assert tr.current_bytes == 0
        assert tr.live_allocations() == []
        storage.resize_(400)
        assert tr.current_bytes == tr.peak_bytes == 400
        assert [a.nbytes for a in tr.peak_snapshot()] == [400]
        storage.resize_(0)
        del x, storage
        assert tr.current_bytes == 0
    assert "resize_" not in torch.UntypedStorage.__dict__  # the wrapper is gone after the mode
