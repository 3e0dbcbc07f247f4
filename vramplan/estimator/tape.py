"""A tiny symbolic autograd tape: replays what a forward pass allocates and what autograd saves for backward.

Each op allocates its output, may hold a transient (e.g. a dequantized weight), and saves some tensors for
backward (torch's derivative formulas decide which: `mm` saves `self` only if `mat2` requires grad, so a frozen
linear saves nothing). A tensor is freed when the program drops it and no node saves it. The backward replay
walks the nodes in reverse: it allocates each input's gradient, frees the output's gradient and the node's saved
tensors (autograd releases `SavedVariable`s after a node runs when `retain_graph=False`).

Sizes are bytes. The tape only counts; it never touches torch. With `events` set to a list, it also records the
allocation sequence the caching-allocator simulation replays (`allocator.py`): `(key, nbytes)` for an allocation,
`(key, -1)` for a free; keys are tensor ids, `("g", id)` for a gradient, `("t", n)` for a transient. Recording
never changes the counting.
"""

from __future__ import annotations

from typing import NamedTuple

# No @dataclass here: a dataclass execs its generated methods when the class is made, 0.4-0.7 ms each of a cold
# `vramplan estimate` (benchmarks/estimate_cold.py); a NamedTuple or a written-out class costs a fraction.


class LayerCost(NamedTuple):
    """One decoder layer's memory, from two tape replays (`layer_costs.py`). Bytes; "abs" values count from zero
    live."""

    fwd_peak: int  # forward transient above the live bytes at the layer's start (its input counted there)
    keep: int  # bytes the layer leaves alive for backward (saved tensors; under checkpointing its input)
    cache: int  # bytes alive until the forward returns only (the KV cache's copies no node saves)
    bwd_abs: int  # backward peak of the layer alone: its saved tensors, incoming grad, new grads, temps
    recompute_peak: int  # checkpointing: recompute transient above its input
    param_grads: int  # .grad bytes created by the layer's backward
    stash: int = 0  # activation offloading: the device tensors of the last packs, alive when the head starts


class Node:
    """One autograd node: its output, the inputs that get gradients, the tensors it saves for backward."""

    __slots__ = ("out", "grad_inputs", "saved", "bwd_temp", "param_grad")

    def __init__(self, out: int, grad_inputs: tuple[int, ...], saved: tuple[int, ...], bwd_temp: int = 0,
                 param_grad: int = 0) -> None:
        self.out = out
        self.grad_inputs = grad_inputs
        self.saved = saved
        self.bwd_temp = bwd_temp  # transient during this node's backward beyond the input gradients
        self.param_grad = param_grad  # bytes of a trainable weight's .grad created by this node (until zero_grad)


class Tape:
    """The tape of one program: tensor sizes, references, which nodes save which tensors, live and peak bytes."""

    def __init__(self, checkpointing: bool = False, events: list | None = None) -> None:
        self.checkpointing = checkpointing  # saved tensors hold no memory (non-reentrant checkpoint's pack hook)
        self.live = 0
        self.peak = 0
        self.size: dict[int, int] = {}
        self.grad: dict[int, bool] = {}
        self.refs: dict[int, int] = {}
        self.saved_by: dict[int, int] = {}
        self.nodes: list[Node] = []
        self.freed: set[int] = set()
        self.cached: list[int] = []  # autocast's weight-cast cache (held until the region ends)
        self.events = events  # the allocation sequence, when recorded (see the module docstring)
        self._next = 0

    def _log(self, key: object, nbytes: int) -> None:
        if self.events is not None:
            self.events.append((key, nbytes))

    def _transient(self, nbytes: int) -> None:
        """A temporary allocated and freed within one op (recorded only)."""
        if self.events is not None and nbytes > 0:
            key = ("t", len(self.events))
            self.events.append((key, nbytes))
            self.events.append((key, -1))

    # Forward (the peak is raised inline, not by a helper: these lines run for every tensor of every replay) ----
    def new(self, nbytes: int, grad: bool = False) -> int:
        """An input that exists before the program (its bytes count from now)."""
        t = self._next
        self._next += 1
        self.size[t], self.grad[t], self.refs[t], self.saved_by[t] = nbytes, grad, 1, 0
        self.live += nbytes
        if self.events is not None:  # `_log`, inlined
            self.events.append((t, nbytes))
        if self.live > self.peak:
            self.peak = self.live
        return t

    def op(self, nbytes: int, inputs: tuple[int, ...] = (), saves: tuple[int, ...] = (), *,
           grad: bool | None = None, temp: int = 0, bwd_temp: int = 0, param_grad: int = 0,
           alias: int | None = None, saves_out: bool = False) -> int:
        """Run one op: allocate its output (or alias an input: a no-op cast/view), hold `temp` transiently."""
        needs_grad = any(self.grad[i] for i in inputs) or param_grad > 0 if grad is None else grad
        if alias is not None:
            self.refs[alias] += 1
            return alias
        if self.live + nbytes + temp > self.peak:  # the output and the transient, on top of what is live
            self.peak = self.live + nbytes + temp
        if temp and self.events is not None:  # e.g. a dequantized weight: alive while the output is written
            key = ("t", len(self.events))
            self._log(key, temp)
            out = self.new(nbytes, needs_grad)
            self._log(key, -1)
        else:
            out = self.new(nbytes, needs_grad)
        if needs_grad:
            kept = tuple(s for s in saves if s is not None)
            if not self.checkpointing:
                for s in kept:
                    self.saved_by[s] += 1
            if saves_out:  # e.g. rsqrt, softmax, log_softmax save their result
                kept += (out,)
                if not self.checkpointing:
                    self.saved_by[out] += 1
            grad_inputs = tuple(i for i in inputs if self.grad[i])
            self.nodes.append(Node(out, grad_inputs, () if self.checkpointing else kept, bwd_temp, param_grad))
        return out

    def release_cached(self) -> int:
        """The autocast region ends: its cache lets go of the cast weights; returns the bytes that freed."""
        before = self.live
        self.drop(*self.cached)
        self.cached.clear()
        return before - self.live

    def drop(self, *tensors: int) -> None:
        """The program releases its reference (a Python variable dies)."""
        for t in tensors:
            self.refs[t] -= 1
            self._maybe_free(t)

    def _maybe_free(self, t: int) -> None:
        if self.refs[t] <= 0 and self.saved_by[t] <= 0 and t not in self.freed:
            self.live -= self.size[t]
            self.freed.add(t)
            self._log(t, -1)

    # Backward ----------------------------------------------------------------------------------------------
    def _unpack(self, node: Node) -> int:
        """Bytes brought back onto the device before `node`'s backward runs (activation offloading: offloading.py)."""
        return 0

    def _after(self, node: Node | None) -> int:
        """Bytes released after `node`'s backward ran (None: the backward ended)."""
        return 0

    def backward(self, out_grad_of: int, accumulate: bool = False, grad_key: int | None = None) -> tuple[int, int]:
        """Replay backward from a gradient of `out_grad_of`; returns (peak above start, param grad bytes).

        The gradient of `out_grad_of` is allocated by the caller's accounting (it is the incoming gradient).
        `accumulate`: the parameters' `.grad` already exist (a later micro-batch of gradient accumulation), so
        each new weight gradient lives only until AccumulateGrad has added it in place.
        `grad_key` (recording only): the incoming gradient already exists under `("g", grad_key)` (a checkpointed
        layer's recompute output stands for the forward's output), so no allocation is recorded for it.
        """
        start, peak = self.live, self.live
        grads: dict[int, int] = {out_grad_of: self.size[out_grad_of]}
        live = self.live + grads[out_grad_of]
        peak = max(peak, live)
        param_grads = 0
        if grad_key is None:
            self._log(("g", out_grad_of), grads[out_grad_of])
        for node in reversed(self.nodes):
            g_out = grads.pop(node.out, None)
            if g_out is None:
                continue
            new = accumulated = 0
            for i in node.grad_inputs:
                if i not in grads:
                    grads[i] = self.size[i]
                    new += grads[i]
                    self._log(("g", i), grads[i])
                else:  # a second use of the input: its gradient is computed, then added into the buffer
                    accumulated += self.size[i]
                    self._transient(self.size[i])
            live += new + (0 if accumulate else node.param_grad) + self._unpack(node)
            param_grads += node.param_grad
            peak = max(peak, live + accumulated + node.bwd_temp + (node.param_grad if accumulate else 0))
            if node.param_grad:  # a weight's .grad: kept until zero_grad (the caller frees "p" keys)
                if accumulate:
                    self._transient(node.param_grad)
                else:
                    self._log(("p", len(self.events or ())), node.param_grad)
            self._transient(node.bwd_temp)
            live -= g_out
            self._log(("g", grad_key if node.out == out_grad_of and grad_key is not None else node.out), -1)
            for s in node.saved:
                self.saved_by[s] -= 1
                if self.saved_by[s] <= 0 and self.refs[s] <= 0 and s not in self.freed:
                    live -= self.size[s]
                    self.freed.add(s)
                    self._log(s, -1)
            live -= self._after(node)
        live -= self._after(None)
        # what is left in `grads` flows to the inputs of the program (the caller accounts for it)
        self.live = live
        return peak - start, param_grads
