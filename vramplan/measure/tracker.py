"""An exact live-bytes tracker: counts tensor *storage* bytes the way `torch.cuda.memory_allocated()` does.

`MemoryTracker` is a `TorchDispatchMode`. Every aten op that runs while it is active passes through it; each
output whose storage it has not seen, and that is not one of the op's inputs' storages, is a new allocation.
It is counted once (views, `.data`, in-place ops and `out=` results share a storage) and uncounted when the
storage dies: a `weakref.finalize` on `tensor.untyped_storage()`, whose Python object torch keeps alive for
as long as the C++ storage lives (PyObject preservation), for real tensors and FakeTensors alike.

What it ignores and cannot see:
- allocator rounding (CUDA rounds blocks to 512 bytes), the caching allocator's reserve, fragmentation;
- temporaries that a custom op allocates inside its own kernel, because the mode sees the op, not its body:
  bitsandbytes' `gemm_4bit` dequantizes the whole 4-bit weight to a [out, in] compute-dtype buffer on CUDA
  (and in its CPU/default kernel) and frees it before returning (90 MB for a 7B MLP projection in bf16); the
  8-bit optimizers' kernels work in place. The backward pass of a 4-bit layer calls `dequantize_4bit` as its
  own op, so that copy *is* counted. Workspaces that kernels take from the caching allocator (cuBLAS,
  flash-attention scratch) are counted by `memory_allocated()` but not here;
- tensors that existed before the mode was entered, unless the caller `register`s them;
- tensors made without an aten op: `torch.from_numpy`, `torch.frombuffer`, bitsandbytes' paged (CUDA managed)
  buffers. `torch.tensor(data)` is seen: its `lift_fresh` counts as the allocation.

`UntypedStorage.resize_` bypasses the dispatcher on CPU and CUDA (`THPStorage_resize_` calls
`resize_bytes_cpu/cuda` directly). FSDP2 frees and re-allocates every unsharded parameter that way
(`_fsdp_param.py: free_storage / alloc_storage`), so while a tracker is active the method is wrapped and a
tracked storage's new size is counted (`_follow_storage_resizes`).

Snapshots are cheap: with `record=True` each allocation keeps a small record with its alloc/free sequence
numbers, and a new peak stores only the current sequence number; `peak_snapshot()` rebuilds the list of
storages live at that moment on demand (after Zach DeVito's allocator snapshots, without stack traces).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from vramplan.record import Record


class Allocation(Record):
    """One storage: its size, the tensor that created it, the op, the innermost module and the phase; `name`
    says what holds it (a parameter, buffer or optimizer-state path) once the caller `name_tensors` it. A record,
    so a step's snapshots read back from JSON checked (gloo ranks hand steps over as JSON)."""

    nbytes: int
    shape: tuple[int, ...]
    dtype: str
    op: str
    module: str
    phase: str
    name: str = ""


class _Record:
    """An allocation plus the sequence numbers of its birth and (once dead) its death."""

    __slots__ = ("alloc", "born", "died")

    def __init__(self, alloc: Allocation, born: int) -> None:
        self.alloc = alloc
        self.born = born
        self.died: int | None = None


class MemoryTracker(TorchDispatchMode):
    """Live storage bytes, their peak, and (with `record=True`) what was live at the peak.

    Use as a context manager; nest inside a `FakeTensorMode` to trace. `phase(name)` tags allocations and
    resets the peak, so `peak_bytes` after the block is that phase's peak.
    """

    def __init__(self, record: bool = False) -> None:
        super().__init__()
        self.record = record
        self.current_bytes = 0
        self.peak_bytes = 0
        self.phase_name = "setup"
        self._live: dict[int, tuple[int, _Record | None]] = {}  # id(storage) -> (nbytes, record)
        self._records: list[_Record] = []
        self._seq = 0
        self._peak_seq = 0
        self._names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self._stack: list[str] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    # Public API ------------------------------------------------------------------------------------------
    def register(self, tensors: torch.Tensor | Iterable[torch.Tensor], label: str = "registered") -> int:
        """Count tensors that already exist (model weights built before the mode); returns the bytes added."""
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        before = self.current_bytes
        for t in _plain_tensors(tensors):
            self._track(t, label)
        return self.current_bytes - before

    def name_modules(self, root: torch.nn.Module) -> None:
        """Learn qualified names (`model.layers.0.self_attn.q_proj`) for the module tags of allocations."""
        for name, module in root.named_modules():
            self._names[module] = name or type(module).__name__

    def name_tensors(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Label the live storages of these tensors (e.g. `model.named_parameters()`) in snapshots."""
        if not self.record:
            return
        for name, t in named:
            entry = self._live.get(id(t.untyped_storage()))
            if entry is not None and entry[1] is not None and not entry[1].alloc.name:
                entry[1].alloc = replace(entry[1].alloc, name=name)

    def reset_peak(self) -> None:
        """Start a new peak at the current live bytes (and forget records that can no longer matter)."""
        self.peak_bytes = self.current_bytes
        self._peak_seq = self._seq
        self._records = [r for r in self._records if r.died is None]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[MemoryTracker]:
        """Tag allocations with `name` and measure this block's own peak in `peak_bytes`."""
        previous = self.phase_name
        self.phase_name = name
        self.reset_peak()
        try:
            yield self
        finally:
            self.phase_name = previous

    def peak_snapshot(self) -> list[Allocation]:
        """The storages live when `peak_bytes` was reached (needs `record=True`), largest first."""
        if not self.record:
            raise RuntimeError("MemoryTracker(record=True) is needed for snapshots")
        at = self._peak_seq
        live = [r.alloc for r in self._records
                if r.born <= at and (r.died is None or r.died > at) and r.alloc.nbytes]
        return sorted(live, key=lambda a: -a.nbytes)

    def live_allocations(self) -> list[Allocation]:
        """The storages live now (needs `record=True`), largest first."""
        if not self.record:
            raise RuntimeError("MemoryTracker(record=True) is needed for snapshots")
        return sorted((r.alloc for r in self._records if r.died is None and r.alloc.nbytes), key=lambda a: -a.nbytes)

    # Mode plumbing ---------------------------------------------------------------------------------------
    def __enter__(self) -> MemoryTracker:
        pre = torch.nn.modules.module.register_module_forward_pre_hook(self._push)
        post = torch.nn.modules.module.register_module_forward_hook(self._pop, always_call=True)
        self._hooks = [pre, post]
        self._unpatch = _follow_storage_resizes(self)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._stack.clear()
        self._unpatch()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        out = func(*args, **(kwargs or {}))
        fresh = _plain_tensors(tree_leaves(out))
        if fresh:
            inputs: set[int] | None = None
            for t in fresh:
                key = id(t.untyped_storage())
                if key in self._live:
                    self._resized(t, key)
                    continue
                if inputs is None:
                    inputs = set() if func in _FRESH_OPS else _storage_ids((args, kwargs))
                if key not in inputs:  # an untracked input's view is not an allocation
                    self._track(t, str(func.overloadpacket))
        return out

    # Internals -------------------------------------------------------------------------------------------
    def _track(self, t: torch.Tensor, op: str) -> None:
        if t.device.type == "meta":  # no memory (a FakeTensor reports its fake device, not 'meta')
            return
        storage = t.untyped_storage()
        key = id(storage)
        nbytes = storage.nbytes()
        if key in self._live or nbytes == 0:
            return
        record = None
        if self.record:
            self._seq += 1
            alloc = Allocation(nbytes=nbytes, shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch."),
                               op=op, module=self._where(), phase=self.phase_name)
            record = _Record(alloc, self._seq)
            self._records.append(record)
        self._live[key] = (nbytes, record)
        finalizer = weakref.finalize(storage, self._free, key)
        finalizer.atexit = False
        self._add(nbytes)

    def _free(self, key: int) -> None:
        nbytes, record = self._live.pop(key)
        self.current_bytes -= nbytes
        if record is not None:
            self._seq += 1
            record.died = self._seq

    def _resized(self, t: torch.Tensor | torch.UntypedStorage, key: int) -> None:
        """`resize_` / `set_` can grow or shrink a storage in place: keep its byte count true."""
        nbytes, record = self._live[key]
        now = (t if isinstance(t, torch.UntypedStorage) else t.untyped_storage()).nbytes()
        if now == nbytes:
            return
        if record is not None:  # in snapshots a resize is a free of the old size and a birth of the new one
            self._seq += 1
            record.died = self._seq
            record = _Record(replace(record.alloc, nbytes=now), self._seq)
            self._records.append(record)
        self._live[key] = (now, record)
        self._add(now - nbytes)

    def _add(self, nbytes: int) -> None:
        self.current_bytes += nbytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self._peak_seq = self._seq

    def _where(self) -> str:
        if self._stack:
            return self._stack[-1]
        node = torch._C._current_autograd_node()
        return f"backward:{node.name()}" if node is not None else ""

    def _push(self, module: torch.nn.Module, args: object) -> None:
        self._stack.append(self._names.get(module) or type(module).__name__)

    def _pop(self, module: torch.nn.Module, args: object, output: object) -> None:
        if self._stack:
            self._stack.pop()


def _follow_storage_resizes(tracker: MemoryTracker):
    """Wrap `torch.UntypedStorage.resize_` so `tracker` sees storages grow and shrink; returns the undo.

    Trackers nest: each wraps the method it finds and restores it on exit (in LIFO order, as `with` does).
    """
    original = torch.UntypedStorage.__dict__.get("resize_")
    inner = torch.UntypedStorage.resize_

    def resize_(storage: torch.UntypedStorage, size: int):
        out = inner(storage, size)
        if id(storage) in tracker._live:
            tracker._resized(storage, id(storage))
        return out

    torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]

    def undo() -> None:
        if original is None:
            del torch.UntypedStorage.resize_
        else:
            torch.UntypedStorage.resize_ = original  # type: ignore[method-assign]

    return undo


# `torch.tensor(data)` builds its tensor below the dispatcher and then calls `lift_fresh` on it: on real tensors
# the output is its own input, so without this the bytes of every tensor made from Python data would be missed.
_FRESH_OPS = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default, torch.ops.aten.lift.default}


def _plain_tensors(leaves: Iterable[object]) -> list[torch.Tensor]:
    """The tensors that own memory: a wrapper subclass (DTensor, the sharded parameters and gradients of FSDP2)
    has no storage of its own (its `untyped_storage()` reports the *global* size), so it is replaced by its inner
    tensors (`__tensor_flatten__`), recursively. The mode sees the op on the wrapper, not the inner ops."""
    out: list[torch.Tensor] = []
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        if is_traceable_wrapper_subclass(leaf):
            names, _ = leaf.__tensor_flatten__()
            out.extend(_plain_tensors(getattr(leaf, n) for n in names))
        else:
            out.append(leaf)
    return out


def _storage_ids(tree: object) -> set[int]:
    leaves = tree_leaves(tree)
    ids = {id(t.untyped_storage()) for t in _plain_tensors(leaves)}
    ids.update(id(leaf) for leaf in leaves if isinstance(leaf, torch.UntypedStorage))
    return ids


def summarize(allocations: Iterable[Allocation], by: str = "op") -> list[tuple[str, int, int]]:
    """Group allocations by 'op', 'module', 'phase', 'dtype' or 'shape': (key, bytes, count), largest first."""
    groups: dict[str, list[int]] = {}
    for a in allocations:
        key = str(getattr(a, by))
        entry = groups.setdefault(key, [0, 0])
        entry[0] += a.nbytes
        entry[1] += 1
    return sorted(((k, b, n) for k, (b, n) in groups.items()), key=lambda row: -row[1])
