"""vramplan.estimator.tape against torch's autograd on CPU: a small program replayed on the tape gives the live
bytes that vramplan.measure.tracker (every storage an aten op allocates, freed when the storage dies) measures
while torch runs the same program: forward peak, what stays saved for backward, and the backward's peak."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramplan.estimator.tape import Tape  # noqa: E402
from vramplan.measure.tracker import MemoryTracker  # noqa: E402

B, H = 64, 96
ACT, W, SCALAR = B * H * 4, H * H * 4, 4  # fp32 bytes


def torch_program(square: bool) -> tuple[int, int, int, int]:
    """(forward peak, live after forward, backward peak above the forward's end, .grad bytes): a frozen linear, a
    ReLU, a trainable linear, then ReLU (saves its result) or a square (mul saves both inputs: one tensor used
    twice, so its gradient is accumulated), and a mean."""
    w1 = torch.randn(H, H)
    w2 = torch.randn(H, H, requires_grad=True)
    with MemoryTracker() as tracker:
        x = torch.randn(B, H)
        h1 = x @ w1
        del x
        a = torch.relu(h1)
        del h1
        h2 = a @ w2  # mm saves `a` for w2's gradient
        del a
        r = h2 * h2 if square else torch.relu(h2)
        del h2
        loss = r.mean()
        del r
        forward_peak, after_forward = tracker.peak_bytes, tracker.current_bytes
        tracker.reset_peak()
        loss.backward()
        backward_peak = tracker.peak_bytes - after_forward
    return forward_peak, after_forward, backward_peak, w2.grad.numel() * 4


def tape_program(square: bool) -> tuple[int, int, int, int]:
    t = Tape()
    x = t.new(ACT)
    h1 = t.op(ACT, inputs=(x,))  # frozen weight, input without grad: no node, nothing saved
    t.drop(x)
    a = t.op(ACT, inputs=(h1,))
    t.drop(h1)
    h2 = t.op(ACT, inputs=(a,), saves=(a,), param_grad=W)
    t.drop(a)
    r = t.op(ACT, inputs=(h2, h2), saves=(h2, h2)) if square else t.op(ACT, inputs=(h2,), saves_out=True)
    t.drop(h2)
    loss = t.op(SCALAR, inputs=(r,))
    t.drop(r)
    forward_peak, after_forward = t.peak, t.live
    backward_peak, grads = t.backward(loss)
    return forward_peak, after_forward, backward_peak, grads


@pytest.mark.parametrize("square", [False, True], ids=["relu", "square"])
def test_tape_replays_what_torch_allocates_and_saves(square):
    forward_peak, after_forward, backward_peak, grads = tape_program(square)
    # torch.autograd.backward keeps the root's incoming gradient (the scalar loss's `ones`, in its grad_tensors)
    # until the backward ends; the tape frees it after the first node: 4 bytes for a scalar loss, measured here
    assert (forward_peak, after_forward, backward_peak + SCALAR, grads) == torch_program(square)


def test_checkpointing_saves_nothing_on_the_tape():
    t = Tape(checkpointing=True)
    a = t.new(ACT, grad=True)
    h = t.op(ACT, inputs=(a,), saves=(a,), param_grad=W)
    t.drop(a)
    assert t.live == ACT and t.saved_by[a] == 0 and t.nodes[-1].saved == ()
    assert t.backward(h) == (ACT + ACT + W, W)  # dh, then da and the weight's grad
