"""The caching-allocator simulation, one test per rule of c10/cuda/CUDACachingAllocator.cpp.

Oracle: the allocator's source (constants and branches cited in vramplan/estimator/allocator.py). The expected
numbers follow by hand from those rules; none comes from running the simulation.
"""

from __future__ import annotations

import pytest

from vramplan.errors import AllocatorOutOfMemory
from vramplan.estimator.allocator import (
    AllocatorConfig,
    CachingAllocator,
    allocation_size,
    round_size,
)
from vramplan.units import MiB


def test_round_size_512():
    assert [round_size(n) for n in (1, 512, 513, 1000)] == [512, 512, 1024, 1024]


def test_allocation_size_small_large_and_rounded():
    assert allocation_size(1 * MiB) == 2 * MiB  # kSmallBuffer
    assert allocation_size(1 * MiB + 512) == 20 * MiB  # kLargeBuffer below kMinLargeAlloc
    assert allocation_size(10 * MiB) == 10 * MiB  # >= 10 MiB: rounded to kRoundLarge
    assert allocation_size(11 * MiB + 512) == 12 * MiB


def test_small_requests_pack_into_one_2mib_segment():
    a = CachingAllocator()
    for _ in range(4):
        a.malloc(512 * 1024)
    assert a.reserved == 2 * MiB and a.allocated == 2 * MiB
    a.malloc(1)
    assert a.reserved == 4 * MiB  # a second small segment


def test_large_pool_shares_20mib_segment_and_splits():
    a = CachingAllocator()
    a.malloc(3 * MiB)
    a.malloc(11 * MiB)  # best fit: the 17 MiB remainder of the 20 MiB segment, split (6 MiB > kSmallSize left)
    assert a.reserved == 20 * MiB
    a.malloc(5 * MiB)
    assert a.reserved == 20 * MiB


def test_large_block_not_split_when_remainder_at_most_1mib():
    a = CachingAllocator()
    h = a.malloc(12 * MiB)
    a.free(h)
    a.malloc(11 * MiB + 512)  # remainder 1 MiB - 512 <= kSmallSize: the whole 12 MiB block is handed out
    assert a.allocated == 12 * MiB and a.requested == 11 * MiB + 512


def test_small_block_split_down_to_512():
    a = CachingAllocator()
    a.malloc(1 * MiB)
    a.malloc(1 * MiB - 512)
    a.malloc(512)  # the 512 B remainder of the small segment is split off and reused
    assert a.reserved == 2 * MiB


def test_best_fit_takes_smallest_cached_block():
    a = CachingAllocator()
    big, gap, small = a.malloc(40 * MiB), a.malloc(1 * MiB + 512), a.malloc(12 * MiB)
    a.free(big)
    a.free(small)
    before = a.reserved
    a.malloc(12 * MiB)  # the 12 MiB block, not the 40 MiB one
    a.malloc(40 * MiB)
    assert a.reserved == before
    del gap


def test_freed_blocks_are_cached_and_coalesced():
    a = CachingAllocator()
    h1, h2 = a.malloc(5 * MiB), a.malloc(5 * MiB)
    a.free(h1)
    a.free(h2)  # merges with h1 and the 10 MiB tail: one free 20 MiB block
    assert a.reserved == 20 * MiB and a.allocated == 0
    a.malloc(19 * MiB)
    assert a.reserved == 20 * MiB


def test_fragmentation_without_coalescing_across_segments():
    a = CachingAllocator()
    h1, h2 = a.malloc(30 * MiB), a.malloc(30 * MiB)
    a.free(h1)
    a.free(h2)
    a.malloc(50 * MiB)  # two separate 30 MiB segments cannot merge: a third segment
    assert a.reserved == 110 * MiB


def test_streams_do_not_share_cached_blocks():
    a = CachingAllocator()
    a.free(a.malloc(30 * MiB, stream=1))
    a.malloc(30 * MiB, stream=0)
    assert a.reserved == 60 * MiB


def test_max_split_size_keeps_small_requests_off_oversize_blocks():
    a = CachingAllocator(AllocatorConfig(max_split_size_bytes=64 * MiB))
    a.free(a.malloc(100 * MiB))
    a.malloc(20 * MiB)  # below max_split_size: may not use the 100 MiB oversize block
    assert a.reserved == 120 * MiB
    b = CachingAllocator(AllocatorConfig(max_split_size_bytes=64 * MiB))
    b.free(b.malloc(100 * MiB))
    b.malloc(70 * MiB)  # oversize request, but 100 >= 70 + kLargeBuffer: a block too large, a new segment
    assert b.reserved == 170 * MiB
    b.malloc(85 * MiB)  # 100 < 85 + kLargeBuffer: takes the oversize block whole, unsplit
    assert b.reserved == 170 * MiB and b.allocated == 170 * MiB


def test_expandable_segments_grow_by_pages():
    a = CachingAllocator(AllocatorConfig(expandable_segments=True))
    h = [a.malloc(30 * MiB) for _ in range(3)]
    assert a.reserved == 100 * MiB  # 90 MiB mapped in 20 MiB pages
    a.free(h[0])
    a.free(h[1])
    a.malloc(50 * MiB)  # the freed 60 MiB at the front serves it
    assert a.reserved == 100 * MiB


def test_full_device_frees_cache_and_retries():
    a = CachingAllocator(capacity_bytes=100 * MiB)
    a.free(a.malloc(60 * MiB))
    a.malloc(70 * MiB)  # 60 + 70 > 100: release the free 60 MiB segment, retry
    assert a.reserved == 70 * MiB and a.retries == 1
    with pytest.raises(AllocatorOutOfMemory):
        a.malloc(40 * MiB)


def test_garbage_collection_threshold_frees_cache_early():
    a = CachingAllocator(AllocatorConfig(garbage_collection_threshold=0.5), capacity_bytes=100 * MiB)
    a.free(a.malloc(40 * MiB))
    a.malloc(42 * MiB)  # 40 + 42 > 50: the cached segment is released before growing
    assert a.reserved == 42 * MiB and a.retries == 0


def test_replay_frees_in_order_or_one_allocation_late():
    from vramplan.estimator.replay import replay

    events = [("a", 30 * MiB), ("a", -1), ("b", 30 * MiB), ("b", -1), ("c", 30 * MiB)]
    assert replay(events).peak_reserved == 30 * MiB  # each block reused by the next request
    assert replay(events, lag=1).peak_reserved == 60 * MiB  # "a" returns only after "b" is allocated


def test_expandable_free_tail_that_max_split_keeps_best_fit_off_is_handed_out_whole():
    """`try_allocate_expandable_block` maps pages only while the candidate is smaller than the request: a free
    tail at or above max_split_size, refused by best fit (`get_free_block`) for a small request, is taken as it
    is, unsplit (`should_split`); nothing is mapped and nothing unmapped."""
    a = CachingAllocator(AllocatorConfig(expandable_segments=True, max_split_size_bytes=20 * MiB))
    a.free(a.malloc(30 * MiB))  # two 20 MiB pages; oversize, so not split
    assert a.reserved == 40 * MiB
    a.malloc(5 * MiB)
    assert a.reserved == 40 * MiB and a.allocated == 40 * MiB
