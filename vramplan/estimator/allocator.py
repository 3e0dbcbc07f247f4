"""A simulation of PyTorch's CUDA caching allocator: what `torch.cuda.max_memory_reserved()` reports.

Pure Python, no torch. Each rule cites `c10/cuda/CUDACachingAllocator.cpp` (torch 2.x; the constants live in
`c10/core/AllocatorConfig.h` since 2.8):

* `round_size`: every request is rounded up to a multiple of kMinBlockSize (512 B).
* Two pools per stream: requests <= kSmallSize (1 MiB) come from the small pool, the rest from the large pool
  (`get_pool`). Blocks are keyed by (stream, size, address): a block freed on one stream is never handed to a
  request on another (`BlockComparatorSize`, `get_free_block`'s `lower_bound` on the stream's key).
* `get_allocation_size`: a new segment (cudaMalloc) is kSmallBuffer (2 MiB) for a small request, kLargeBuffer
  (20 MiB) for a request below kMinLargeAlloc (10 MiB), else the request rounded up to kRoundLarge (2 MiB).
* Best fit: `get_free_block` takes the smallest cached block of the stream's pool that is >= the request.
  With `max_split_size_mb`, a request below it never takes an oversize block (>= max_split_size), and a large
  request only takes an oversize block of at most request + kLargeBuffer.
* `should_split`: the remainder becomes a free block when it is >= kMinBlockSize (small pool) or > kSmallSize
  (large pool), and the block is below max_split_size; otherwise the whole block is handed out (and counted as
  allocated: `stats.allocated_bytes` adds `block->size`).
* `free_block` caches the block and `try_merge_blocks` coalesces it with free neighbours of its segment; a
  segment goes back to CUDA only in `release_cached_blocks` (empty_cache, or an allocation that cudaMalloc
  refuses: `alloc_block` fails, then `release_available_cached_blocks`, then `release_cached_blocks`, then one
  retry), and only when it is entirely free (`release_block` requires no prev/next).
* `garbage_collection_threshold`: before a cudaMalloc, once reserved exceeds the threshold times the allowed
  memory, `garbage_collect_cached_blocks` frees unsplit cached blocks, oldest first.
* `expandable_segments:True`: one segment per (stream, pool) that grows by mapping pages
  (`ExpandableSegment::map`: kSmallBuffer pages for the small pool, kLargeBuffer pages for the large one) at its
  end, so a request that fits nowhere extends the free tail instead of adding a new segment.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from vramplan.errors import AllocatorOutOfMemory
from vramplan.units import MiB

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


_ADDR_BITS = 64  # a free-list entry is one int, `size << 64 | addr`: ordered by (size, address) as the C++ set
_ADDR_MASK = (1 << _ADDR_BITS) - 1


class CachingAllocator:
    """One device's allocator. `malloc` returns a handle; `free` takes it back. Stats in bytes, as torch's
    `memory_stats`: allocated counts whole blocks, requested the callers' sizes, reserved the segments.

    Each pool's free blocks are one sorted list of `size << 64 | addr` ints (the C++ allocator's `BlockPool`
    is a set ordered by (stream, size, address)), so a best-fit lookup is one `bisect` on plain ints."""

    def __init__(self, config: AllocatorConfig = AllocatorConfig(), capacity_bytes: int | None = None) -> None:
        self.config = config
        self.capacity = capacity_bytes
        self._free: dict[tuple[int, bool], list[int]] = {}  # (stream, small) -> sorted size << 64 | addr
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
        block = self._take_free_block(size, small, stream)
        if block is None:
            block = self._alloc_block(size, small, stream)
            self._unlist(block)
        rest = block.size - size
        if (rest >= K_MIN_BLOCK if small else rest > K_SMALL_SIZE) and self._may_split(block):
            self._split(block, size, rest)
        block.free, block.requested = False, nbytes
        self.allocated += block.size
        self.requested += nbytes
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        if self.requested > self.peak_requested:
            self.peak_requested = self.requested
        return block.addr

    def free(self, handle: int) -> None:
        """`free_block`: the block goes back to its pool, merged with free neighbours (`try_merge_blocks`)."""
        block = self._blocks[handle]
        self.allocated -= block.size
        self.requested -= block.requested
        block.free, block.requested = True, 0
        prev, nxt = block.prev, block.next
        if prev is not None and prev.free:
            self._unlist(prev)
            block = self._merge(prev, block)
        if nxt is not None and nxt.free:
            self._unlist(nxt)
            block = self._merge(block, nxt)
        self._list(block)

    def transient(self, nbytes: int, stream: int = 0) -> None:
        """`malloc` then at once `free` of the same block. Served by a cached block, the pair leaves the pools as
        they were (the split remainder merges back: a free block's neighbours are never free, `try_merge_blocks`)
        and only the peaks move; otherwise it is the two calls."""
        size = K_MIN_BLOCK if nbytes < K_MIN_BLOCK else -(-nbytes // K_MIN_BLOCK) * K_MIN_BLOCK
        small = size <= K_SMALL_SIZE
        found = self._best_fit(size, small, stream)
        if found is None:
            self.free(self.malloc(nbytes, stream))
            return
        rest = (found >> _ADDR_BITS) - size
        split = (rest >= K_MIN_BLOCK if small else rest > K_SMALL_SIZE) and self._may_split(
            self._blocks[found & _ADDR_MASK])
        self.peak_allocated = max(self.peak_allocated, self.allocated + (size if split else size + rest))
        self.peak_requested = max(self.peak_requested, self.requested + nbytes)

    def empty_cache(self) -> None:
        """`release_cached_blocks`: every entirely free segment goes back to CUDA."""
        for key in list(self._free):
            for entry in list(self._free[key]):
                block = self._blocks[entry & _ADDR_MASK]
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
    def _best_fit(self, size: int, small: bool, stream: int) -> int | None:
        """`get_free_block`: the pool entry of the best fit within the stream's pool, with the max_split_size
        limits; None when no cached block serves the request."""
        pool = self._free.get((stream, small))
        if not pool:
            return None
        i = bisect.bisect_left(pool, size << _ADDR_BITS)
        if i == len(pool):
            return None
        found = pool[i]
        limit = self.config.max_split_size_bytes
        if limit is not None:
            if size < limit <= found >> _ADDR_BITS:
                return None
            if size >= limit and found >> _ADDR_BITS >= size + K_LARGE_BUFFER:
                return None
        return found

    def _take_free_block(self, size: int, small: bool, stream: int) -> Block | None:
        """The best fit, taken out of its pool."""
        found = self._best_fit(size, small, stream)
        if found is None:
            return None
        pool = self._free[(stream, small)]
        del pool[bisect.bisect_left(pool, found)]
        return self._blocks[found & _ADDR_MASK]

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
                raise AllocatorOutOfMemory(f"{size} bytes: {self.allocated} allocated, {self.reserved} reserved")
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
        # a free tail that already holds the request (max_split_size kept best fit off it) is handed out as it
        # is: `try_allocate_expandable_block` maps pages only while `candidate->size < size`
        need = max(0, -(-(size - have) // page) * page)
        if not self._room(need):
            self.empty_cache()
            self.retries += 1
            if not self._room(need):
                raise AllocatorOutOfMemory(f"{size} bytes: {self.allocated} allocated, {self.reserved} reserved")
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

    def _may_split(self, block: Block) -> bool:
        """`should_split`'s max_split_size clause: an oversize large block is handed out whole."""
        limit = self.config.max_split_size_bytes
        return limit is None or block.small or block.size < limit

    def _split(self, block: Block, size: int, rest: int) -> None:
        """`should_split` said yes: the remainder past `size` becomes a free block of the same segment."""
        remainder = Block(block.addr + size, rest, block.seg, block.small, block.stream)
        remainder.prev, remainder.next = block, block.next
        if block.next is not None:
            block.next.prev = remainder
        block.next, block.size = remainder, size
        self._blocks[remainder.addr] = remainder
        if self._expandable and self._expandable.get((block.stream, block.small)) is block:
            self._expandable[(block.stream, block.small)] = remainder
        self._list(remainder)

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
        pool = self._free.get((block.stream, block.small))
        if pool is None:
            pool = self._free[(block.stream, block.small)] = []
        bisect.insort(pool, block.size << _ADDR_BITS | block.addr)

    def _unlist(self, block: Block) -> None:
        pool = self._free[(block.stream, block.small)]
        del pool[bisect.bisect_left(pool, block.size << _ADDR_BITS | block.addr)]
