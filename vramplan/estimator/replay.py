"""Replaying an allocation sequence through the caching-allocator simulation, fast enough for a search.

`step_events` records a step as `(key, nbytes)` pairs; `schedule` (vramplan.estimator.schedule) turns them into
one int per allocator call (the order the allocator sees, with frees delayed by `lag` allocations); `replay` runs
that through the allocator. With the default `PYTORCH_CUDA_ALLOC_CONF` (what every search prices), the run uses
`FlatAllocator`: the rules of `allocator.CachingAllocator` (best fit in a size-ordered pool, split, merge with free
neighbours, new segments of `allocation_size`, empty the cache and retry when the device is full) on plain ints and
dicts instead of linked `Block` objects. tests/test_allocator_equivalence.py holds it, and the class, byte-identical
to the simulation as it was before either existed (tests/allocator_reference.py) over many plans.

Why the flat form can drop the links: blocks of one segment tile it, so a block's neighbours are the blocks
that end where it starts and start where it ends (`free_end`, `free_at`); segments are laid out with a gap, so
neighbours never cross a segment (the C++ allocator's `prev`/`next` never leave one either); the gap keeps the
address order, so same-size blocks are still handed out lowest address first (`BlockComparatorSize`).
"""

from __future__ import annotations

import copy
from bisect import bisect_left, insort
from dataclasses import dataclass

from vramplan.errors import AllocatorOutOfMemory
from vramplan.estimator.allocator import (
    K_MIN_BLOCK,
    K_SMALL_SIZE,
    AllocatorConfig,
    CachingAllocator,
    allocation_size,
    round_size,
)
from vramplan.estimator.schedule import TRANSIENT, Event, Run, schedule, schedule_marked, schedule_runs

__all__ = ["TRANSIENT", "Event", "Run", "ReplayStats", "replay", "replay_resuming", "schedule", "schedule_marked",
           "schedule_runs"]  # the schedules live in vramplan.estimator.schedule; their names stay importable here

_BITS = 64  # a pool entry is `size << 64 | addr`: the int order is the (size, address) order
_MASK = (1 << _BITS) - 1
_SMALL_POOL = 1 << 60  # address bit of small-pool segments (one address space per pool, order kept in each)
_GAP = K_MIN_BLOCK  # between segments: a block's neighbour by address is always in its own segment


@dataclass(frozen=True)
class ReplayStats:
    """What the replay leaves, as torch's `memory_stats` names it (bytes)."""

    peak_reserved: int
    peak_allocated: int
    peak_requested: int
    reserved: int
    allocated: int
    requested: int
    retries: int  # `num_alloc_retries`: allocations that succeeded only after the cache was freed


def replay(events: list[Event] | list[int], config: AllocatorConfig | None = None,
           capacity_bytes: int | None = None, lag: int = 0) -> ReplayStats:
    """Run the events (or their `schedule`, which `lag` then does not change) through the allocator."""
    ops = events if not events or isinstance(events[0], int) else schedule(events, lag)
    config = config or AllocatorConfig()
    alloc = FlatAllocator(capacity_bytes) if config == AllocatorConfig() else CachingAllocator(config, capacity_bytes)
    _run(alloc, [], ops)
    return _stats(alloc)


@dataclass
class Snapshot:
    """A default-configuration replay after the first `at` ops of `ops`: where another schedule that begins with
    the same ops can resume (a replay is deterministic: equal ops from an equal state reach an equal state)."""

    ops: list[int]
    at: int
    capacity: int | None
    alloc: FlatAllocator
    handles: list[int]


def replay_resuming(ops: list[int], capacity_bytes: int | None, snapshots: list[Snapshot], mark: int) -> ReplayStats:
    """`replay` of a schedule under the default configuration, resumed from the furthest of `snapshots` whose
    ops begin `ops`; a snapshot at `mark` is added for the schedules after (plans of a search that differ only
    after that point, e.g. in the optimizer, share the replay up to it). A snapshot serves another capacity while
    its own never mattered (`_serves`): a full device's second, capped replay resumes from the free one."""
    start = max((s for s in snapshots if _serves(s, capacity_bytes) and _begins(ops, s)), key=lambda s: s.at,
                default=None)
    if start is None:
        alloc, handles, at = FlatAllocator(capacity_bytes), [], 0
    else:
        alloc, handles, at = start.alloc.copy(), start.handles.copy(), start.at
        alloc.capacity = capacity_bytes
    if at < mark <= len(ops):
        _run(alloc, handles, ops[at:mark])
        snapshots.append(Snapshot(ops, mark, capacity_bytes, alloc.copy(), handles.copy()))
        at = mark
    _run(alloc, handles, ops[at:])
    return _stats(alloc)


def _serves(snapshot: Snapshot, capacity: int | None) -> bool:
    """Is the snapshot's state the one a replay under `capacity` reaches at the same op? Yes under its own
    capacity; and under any other while no capacity ever mattered: a capacity acts only in `_new_segment`, when
    reserved + segment would exceed it, and without an emptied cache (no retry) reserved only grows, so every
    segment so far fits in any capacity at or above the snapshot's reserved (and in none: unconstrained)."""
    if snapshot.capacity == capacity:
        return True
    return snapshot.alloc.retries == 0 and (capacity is None or snapshot.alloc.reserved <= capacity)


def _begins(ops: list[int], snapshot: Snapshot) -> bool:
    """Do `ops` begin with the snapshot's first `at` ops? Two of them looked at first: most snapshots differ there
    (another batch or sequence length), and slicing two prefixes of some 35k ops to compare was ~5 ms a snapshot."""
    at, old = snapshot.at, snapshot.ops
    if at > len(ops) or at and (ops[at - 1] != old[at - 1] or ops[at // 2] != old[at // 2]):
        return False
    return ops is old or old[:at] == ops[:at]


def _run(alloc: FlatAllocator | CachingAllocator, handles: list[int], ops: list[int]) -> None:
    if isinstance(alloc, FlatAllocator):
        _run_flat(alloc, handles, ops)
        return
    malloc, free, transient = alloc.malloc, alloc.free, alloc.transient  # bound once: ~70k ops on a 7B model
    add = handles.append
    for op in ops:
        if op < 0:
            free(handles[~op])
        elif op < TRANSIENT:
            add(malloc(op))
        else:
            transient(op - TRANSIENT)
            add(-1)  # a transient's handle is never freed again


def _run_flat(alloc: FlatAllocator, handles: list[int], ops: list[int]) -> None:
    """`_run` on a `FlatAllocator`: `malloc` (best fit from the pool, `get_free_block`, or a new segment, then
    `should_split`), `free_block` with `try_merge_blocks` (coalesce with the free blocks ending here and starting
    after) and transients in one loop on local names, each distinct request sized once (`_kind`)."""
    pools, free_at, free_end, used = alloc._pools, alloc._free_at, alloc._free_end, alloc._used
    allocated, requested, peak_allocated, peak_requested = (
        alloc.allocated, alloc.requested, alloc.peak_allocated, alloc.peak_requested)
    add, kinds = handles.append, {}
    for op in ops:
        if op < 0:  # free_block
            addr = handles[~op]
            block, nbytes, small = used.pop(addr)
            allocated, requested = allocated - block, requested - nbytes
            pool, end = pools[small], addr + block
            prev = free_end.pop(addr, None)
            if prev is not None:
                del pool[bisect_left(pool, free_at.pop(prev) << _BITS | prev)]
                addr = prev
            after = free_at.pop(end, None)
            if after is not None:
                del free_end[end + after]
                del pool[bisect_left(pool, after << _BITS | end)]
                end += after
            free_at[addr], free_end[end] = end - addr, addr
            insort(pool, (end - addr) << _BITS | addr)
            continue
        nbytes, size, key, small, least = kinds.get(op) or kinds.setdefault(op, _kind(op))
        pool = pools[small]
        i = bisect_left(pool, key)
        if op >= TRANSIENT:  # malloc then free: from the cache, the pool ends as it was (the split part merges back)
            if i == len(pool):
                allocated, requested, peak_allocated, peak_requested = _transient_from_new_segment(
                    alloc, nbytes, allocated, requested, peak_allocated, peak_requested)
            else:
                rest = (pool[i] >> _BITS) - size
                peak_allocated = max(peak_allocated, allocated + (size if rest >= least else size + rest))
                peak_requested = max(peak_requested, requested + nbytes)
            add(-1)  # a transient's handle is never freed again
            continue
        if i < len(pool):
            entry = pool.pop(i)
            addr, block = entry & _MASK, entry >> _BITS
            del free_at[addr], free_end[addr + block]
        else:
            alloc.allocated = allocated  # for the out-of-memory message
            addr, block = alloc._new_segment(size, small)
        if block - size >= least:  # should_split
            tail = addr + size
            free_at[tail], free_end[addr + block] = block - size, tail
            insort(pool, (block - size) << _BITS | tail)
            block = size
        used[addr] = (block, nbytes, small)
        allocated, requested = allocated + block, requested + nbytes
        if allocated > peak_allocated:
            peak_allocated = allocated
        if requested > peak_requested:
            peak_requested = requested
        add(addr)
    alloc.allocated, alloc.requested, alloc.peak_allocated, alloc.peak_requested = (
        allocated, requested, peak_allocated, peak_requested)


def _transient_from_new_segment(alloc: FlatAllocator, nbytes: int, *counters: int) -> tuple[int, int, int, int]:
    """A transient no cached block serves, run as the malloc and free it is; `counters` (allocated, requested and
    their peaks) in and out."""
    alloc.allocated, alloc.requested, alloc.peak_allocated, alloc.peak_requested = counters
    _run_flat(alloc, [], [nbytes, ~0])
    return alloc.allocated, alloc.requested, alloc.peak_allocated, alloc.peak_requested


def _kind(op: int) -> tuple[int, int, int, bool, int]:
    """A scheduled allocation's (requested bytes, `round_size`, the first pool key of that size, small pool, the
    least remainder `should_split` splits off: kMinBlockSize in the small pool, more than kSmallSize in the large)."""
    nbytes = op if op < TRANSIENT else op - TRANSIENT
    size = round_size(nbytes)
    small = size <= K_SMALL_SIZE
    return nbytes, size, size << _BITS, small, K_MIN_BLOCK if small else K_SMALL_SIZE + 1


def _stats(alloc: FlatAllocator | CachingAllocator) -> ReplayStats:
    return ReplayStats(peak_reserved=alloc.peak_reserved, peak_allocated=alloc.peak_allocated,
                       peak_requested=alloc.peak_requested, reserved=alloc.reserved, allocated=alloc.allocated,
                       requested=alloc.requested, retries=alloc.retries)


class FlatAllocator:
    """`CachingAllocator` with the default configuration on one stream, blocks as ints (see the module docstring),
    run by `_run_flat`. Handles are block addresses; a free needs no size: the allocated block's size, request and
    pool are kept by it."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity = capacity_bytes
        self._pools: tuple[list[int], list[int]] = ([], [])  # [large, small]: sorted size << 64 | addr
        self._free_at: dict[int, int] = {}  # free block start -> size
        self._free_end: dict[int, int] = {}  # free block end -> start
        self._used: dict[int, tuple[int, int, bool]] = {}  # allocated block start -> (size, requested, small)
        self._segments: dict[int, int] = {}  # segment start -> size
        self._next = 0
        self.allocated = self.requested = self.reserved = 0
        self.peak_allocated = self.peak_requested = self.peak_reserved = 0
        self.retries = 0

    def copy(self) -> FlatAllocator:
        new = copy.copy(self)
        new._pools = (self._pools[0].copy(), self._pools[1].copy())
        new._free_at, new._free_end = self._free_at.copy(), self._free_end.copy()
        new._used, new._segments = self._used.copy(), self._segments.copy()
        return new

    def _new_segment(self, size: int, small: bool) -> tuple[int, int]:
        """`alloc_block`: cudaMalloc `allocation_size`; a full device frees the cache and retries once."""
        seg = allocation_size(size)
        if self.capacity is not None and self.reserved + seg > self.capacity:
            self._empty_cache()
            self.retries += 1
            if self.reserved + seg > self.capacity:
                raise AllocatorOutOfMemory(f"{size} bytes: {self.allocated} allocated, {self.reserved} reserved")
        addr = self._next | (_SMALL_POOL if small else 0)
        self._next += seg + _GAP
        self._segments[addr] = seg
        self.reserved += seg
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
        return addr, seg

    def _empty_cache(self) -> None:
        """`release_cached_blocks`: every entirely free segment goes back to CUDA."""
        for pool in self._pools:
            for entry in [e for e in pool if self._segments.get(e & _MASK) == e >> _BITS]:
                addr = entry & _MASK
                del pool[bisect_left(pool, entry)]
                del self._free_at[addr], self._free_end[addr + (entry >> _BITS)], self._segments[addr]
                self.reserved -= entry >> _BITS
