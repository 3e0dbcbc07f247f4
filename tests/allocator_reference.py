"""Today's caching-allocator simulation, frozen at commit 0123457 (before the fast replay): the oracle the fast
replay in `vramplan/estimator/allocator.py` must match byte for byte (tests/test_allocator_equivalence.py).
Do not edit: it is the reference, not the model; the rules it follows are cited in the live module.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from vramplan.units import MiB

Event = tuple[object, int]

K_MIN_BLOCK = 512
K_SMALL_SIZE = 1 * MiB
K_SMALL_BUFFER = 2 * MiB
K_LARGE_BUFFER = 20 * MiB
K_MIN_LARGE_ALLOC = 10 * MiB
K_ROUND_LARGE = 2 * MiB


@dataclass(frozen=True)
class AllocatorConfig:
    """The `PYTORCH_CUDA_ALLOC_CONF` knobs that change reserved memory (sizes in bytes)."""

    expandable_segments: bool = False
    max_split_size_bytes: int | None = None  # `max_split_size_mb`; None: unlimited (the default)
    garbage_collection_threshold: float | None = None


class OutOfMemory(Exception):
    """The request fits neither a cached block nor a new segment, even after freeing the cache."""


def round_size(nbytes: int) -> int:
    """`round_size`: at least kMinBlockSize, a multiple of it."""
    return K_MIN_BLOCK if nbytes < K_MIN_BLOCK else -(-nbytes // K_MIN_BLOCK) * K_MIN_BLOCK


def allocation_size(nbytes: int) -> int:
    """`get_allocation_size`: the cudaMalloc size for a rounded request that no cached block serves."""
    if nbytes <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if nbytes < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return -(-nbytes // K_ROUND_LARGE) * K_ROUND_LARGE


class Block:
    __slots__ = ("addr", "free", "next", "prev", "requested", "seg", "size", "small", "stream")

    def __init__(self, addr: int, size: int, seg: int, small: bool, stream: int) -> None:
        self.addr, self.size, self.seg, self.small, self.stream = addr, size, seg, small, stream
        self.free, self.prev, self.next, self.requested = True, None, None, 0


class CachingAllocator:
    """One device's allocator. `malloc` returns a handle; `free` takes it back. Stats in bytes, as torch's
    `memory_stats`: allocated counts whole blocks, requested the callers' sizes, reserved the segments."""

    def __init__(self, config: AllocatorConfig = AllocatorConfig(), capacity_bytes: int | None = None) -> None:
        self.config = config
        self.capacity = capacity_bytes
        self._free: dict[tuple[int, bool], list[tuple[int, int]]] = {}  # (stream, small) -> sorted (size, addr)
        self._blocks: dict[int, Block] = {}  # address -> block
        self._segments: dict[int, int] = {}  # segment id -> its size
        self._expandable: dict[tuple[int, bool], Block] = {}  # (stream, small) -> tail block of the segment
        self._next_addr = 0
        self.allocated = self.requested = self.reserved = 0
        self.peak_allocated = self.peak_requested = self.peak_reserved = 0
        self.retries = 0  # allocations that succeeded only after the cache was freed (`num_alloc_retries`)

    # Public -----------------------------------------------------------------------------------------------
    def malloc(self, nbytes: int, stream: int = 0) -> int:
        size = K_MIN_BLOCK if nbytes < K_MIN_BLOCK else -(-nbytes // K_MIN_BLOCK) * K_MIN_BLOCK  # round_size
        small = size <= K_SMALL_SIZE
        block = self._get_free_block(size, small, stream) or self._alloc_block(size, small, stream)
        self._unlist(block)
        block = self._maybe_split(block, size)
        block.free, block.requested = False, nbytes
        self.allocated += block.size
        self.requested += nbytes
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_requested = max(self.peak_requested, self.requested)
        return block.addr

    def free(self, handle: int) -> None:
        """`free_block`: the block goes back to its pool, merged with free neighbours (`try_merge_blocks`)."""
        block = self._blocks[handle]
        self.allocated -= block.size
        self.requested -= block.requested
        block.free, block.requested = True, 0
        for other in (block.prev, block.next):
            if other is not None and other.free:
                self._unlist(other)
                block = self._merge(block, other)
        self._list(block)

    def empty_cache(self) -> None:
        """`release_cached_blocks`: every entirely free segment goes back to CUDA."""
        for key in list(self._free):
            for _, addr in list(self._free[key]):
                block = self._blocks[addr]
                if self._expandable.get((block.stream, block.small)) is block:
                    self._unmap_tail(block)
                elif block.prev is None and block.next is None:
                    self._release(block)

    def _unmap_tail(self, tail: Block) -> None:
        """Expandable segments: `release_cached_blocks` unmaps the free pages at the segment's end."""
        page = K_SMALL_BUFFER if tail.small else K_LARGE_BUFFER
        keep = (-tail.addr) % page  # the part of a page another block still uses
        drop = (tail.size - keep) // page * page
        if drop <= 0:
            return
        self._unlist(tail)
        tail.size -= drop
        self._segments[tail.seg] -= drop
        self.reserved -= drop
        if tail.size:
            self._list(tail)
        else:
            del self._blocks[tail.addr]
            if tail.prev is not None:
                tail.prev.next = None
            self._expandable[(tail.stream, tail.small)] = tail.prev

    # Finding and making blocks ------------------------------------------------------------------------------
    def _get_free_block(self, size: int, small: bool, stream: int) -> Block | None:
        """`get_free_block`: best fit within the stream's pool, with the max_split_size limits."""
        pool = self._free.get((stream, small))
        if not pool:
            return None
        i = bisect.bisect_left(pool, (size, -1))
        if i == len(pool):
            return None
        found = pool[i][0]
        limit = self.config.max_split_size_bytes
        if limit is not None:
            if size < limit <= found:
                return None
            if size >= limit and found >= size + K_LARGE_BUFFER:
                return None
        return self._blocks[pool[i][1]]

    def _alloc_block(self, size: int, small: bool, stream: int) -> Block:
        """`alloc_block`, with the free-the-cache-and-retry path of `malloc` when the device is full."""
        if self.config.expandable_segments:
            return self._expand(size, small, stream)
        seg = allocation_size(size)
        self._maybe_collect(seg)
        if not self._room(seg):
            self.empty_cache()
            self.retries += 1
            if not self._room(seg):
                raise OutOfMemory(f"{size} bytes: {self.allocated} allocated, {self.reserved} reserved")
        return self._new_segment(seg, small, stream)

    def _new_segment(self, seg: int, small: bool, stream: int) -> Block:
        block = Block(self._next_addr, seg, self._next_addr, small, stream)
        self._next_addr += seg
        self._segments[block.seg] = seg
        self._blocks[block.addr] = block
        self._grow(seg)
        self._list(block)
        return block

    def _expand(self, size: int, small: bool, stream: int) -> Block:
        """Map pages at the end of the (stream, pool) segment until its free tail holds the request."""
        page = K_SMALL_BUFFER if small else K_LARGE_BUFFER
        tail = self._expandable.get((stream, small))
        have = tail.size if tail is not None and tail.free else 0
        need = -(-(size - have) // page) * page
        if not self._room(need):
            self.empty_cache()
            self.retries += 1
            if not self._room(need):
                raise OutOfMemory(f"{size} bytes: {self.allocated} allocated, {self.reserved} reserved")
        self._grow(need)
        if tail is not None and tail.free:
            self._unlist(tail)
            tail.size += need
            self._segments[tail.seg] += need
        else:  # each expandable segment owns a virtual range of its own (`ExpandableSegment` reserves it)
            addr = tail.addr + tail.size if tail is not None else (1 + len(self._expandable)) * K_LARGE_BUFFER << 24
            seg = tail.seg if tail is not None else addr
            block = Block(addr, need, seg, small, stream)
            block.prev = tail
            if tail is not None:
                tail.next = block
            self._segments[seg] = self._segments.get(seg, 0) + need
            self._blocks[block.addr] = block
            tail = block
        self._expandable[(stream, small)] = tail
        self._list(tail)
        return tail

    def _maybe_split(self, block: Block, size: int) -> Block:
        """`should_split`: keep the remainder as a free block when it is big enough."""
        rest = block.size - size
        if rest < K_MIN_BLOCK if block.small else rest <= K_SMALL_SIZE:
            return block
        limit = self.config.max_split_size_bytes
        if limit is not None and not block.small and block.size >= limit:
            return block
        remainder = Block(block.addr + size, rest, block.seg, block.small, block.stream)
        remainder.prev, remainder.next = block, block.next
        if block.next is not None:
            block.next.prev = remainder
        block.next, block.size = remainder, size
        self._blocks[remainder.addr] = remainder
        if self._expandable and self._expandable.get((block.stream, block.small)) is block:
            self._expandable[(block.stream, block.small)] = remainder
        self._list(remainder)
        return block

    # Bookkeeping ------------------------------------------------------------------------------------------
    def _merge(self, a: Block, b: Block) -> Block:
        first, second = (a, b) if a.addr < b.addr else (b, a)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        del self._blocks[second.addr]
        if self._expandable:
            key = (first.stream, first.small)
            if self._expandable.get(key) is second:
                self._expandable[key] = first
        return first

    def _room(self, nbytes: int) -> bool:
        return self.capacity is None or self.reserved + nbytes <= self.capacity

    def _grow(self, nbytes: int) -> None:
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _maybe_collect(self, seg: int) -> None:
        """`garbage_collect_cached_blocks`: above the threshold, free whole cached segments before growing."""
        threshold = self.config.garbage_collection_threshold
        if threshold is None or self.capacity is None or self.reserved + seg <= threshold * self.capacity:
            return
        self.empty_cache()

    def _release(self, block: Block) -> None:
        self._unlist(block)
        del self._blocks[block.addr]
        self.reserved -= self._segments.pop(block.seg)

    def _list(self, block: Block) -> None:
        bisect.insort(self._free.setdefault((block.stream, block.small), []), (block.size, block.addr))

    def _unlist(self, block: Block) -> None:
        pool = self._free[(block.stream, block.small)]
        del pool[bisect.bisect_left(pool, (block.size, block.addr))]


def replay(events: list[Event], config: AllocatorConfig | None = None, capacity_bytes: int | None = None,
           lag: int = 0) -> CachingAllocator:
    """Run the events through the allocator. `lag`: each free happens `lag` allocations late (a tensor whose
    last reference dies a little after the op that last used it: a Python frame, an autograd node's release)."""
    alloc = CachingAllocator(config or AllocatorConfig(), capacity_bytes)
    malloc, free = alloc.malloc, alloc.free  # bound once: ~30k events per step on a 7B model
    handles: dict[object, int] = {}
    pending: list[object] = []  # freed by the program, not yet returned to the allocator (oldest first)
    if lag == 0:
        for key, n in events:
            if n >= 0:
                handles[key] = malloc(n)
            elif key in handles:
                free(handles.pop(key))
        return alloc
    for key, n in events:
        if n >= 0:
            handles[key] = malloc(n)
            if len(pending) >= lag > 0:  # each pending free has now waited `lag` allocations (or more)
                for k in pending[: len(pending) - lag + 1]:
                    alloc.free(handles.pop(k))
                del pending[: len(pending) - lag + 1]
        elif key in handles:
            if lag == 0:
                alloc.free(handles.pop(key))
            else:
                pending.append(key)
    return alloc


def step_events(model, plan, steps: int = 2, shards: int = 1) -> list[Event]:
    """The step loop as it was (each step traced on its own tape), with today's helpers of the live module."""
    from vramplan.estimator import step_events as se
    from vramplan.estimator.tape import Tape
    from vramplan.units import DTYPE_BYTES

    ev = se.load_events(model, plan, shards)
    st = se.static_memory(model, plan)
    opt = se.optimizer_for(st, plan)
    c = se.layer_context(model, plan)
    s = se.step_inputs(model, plan)  # today's helpers take the plan's step fields as one record
    total = sum(st.trainable_numels) or 1
    x_bytes = c.tokens * c.hidden * se.stream_bytes(plan)
    for step in range(steps):
        start = len(ev)
        tp = Tape(events=ev)
        tp._next = 10**9 * (step + 1)  # fresh ids per step
        data = [tp.new(8 * plan.batch * plan.seq) for _ in range(2 * plan.grad_accum)]
        for m in range(min(plan.grad_accum, 2)):  # later micro-batches repeat the second one's sequence
            rope = tp.new(se.rope_bytes(model, plan)) if se.rope_bytes(model, plan) else None
            mask = tp.new(se.attention_mask_bytes(model, plan)) if se.attention_mask_bytes(model, plan) else None
            x = tp.new(x_bytes, se.embedding_output_requires_grad(plan))
            loss, inputs = se._forward(tp, model, s, x)
            se._backward(tp, model, s, loss, inputs, accumulate=m > 0)
            if plan.method == "full" and m == 0:  # embedding_dense_backward: the [vocab, hidden] gradient
                ev.append((("p", "embed", step), c.vocab * c.hidden * DTYPE_BYTES[plan.param_dtype]))
            ev += [(("g", x), -1)] if se.embedding_output_requires_grad(plan) else []
            tp.drop(*[t for t in (rope, mask) if t is not None])
        if step == 0:
            ev += [(("state", i), -(-opt.states_bytes * n // (total * shards))) for i, n in
                   enumerate(st.trainable_numels) if opt.states_bytes]
        temps = [(("tmp", step, i), opt.step_temp_bytes * n // total) for i, n in enumerate(st.trainable_numels)]
        ev += [e for e in temps if e[1] > 0] + [(k, -1) for k, n in temps if n > 0]
        ev += se._zero_grad(ev, start)
        tp.drop(*data)
    return ev
