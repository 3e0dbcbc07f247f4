"""The flat replay on random allocation sequences is the frozen reference simulation, statistic for statistic.

Oracle: tests/allocator_reference.py (the allocator and keyed replay as they were before the fast path, linked
`Block`s). Random sequences reach what step sequences rarely do: a transient served by a new segment, frees
merging on both sides, small and large pools interleaved, an exact fit, an empty-cache retry mid-run and an
out-of-memory; each is run free, capped below its own reserve, and resumed from a snapshot.
"""

from __future__ import annotations

import random

import allocator_reference as ref
import pytest

from vramplan.errors import AllocatorOutOfMemory
from vramplan.estimator.replay import replay, replay_resuming, schedule_marked
from vramplan.units import KiB, MiB

STATS = ("peak_reserved", "peak_allocated", "peak_requested", "reserved", "allocated", "requested", "retries")
SIZES = (1, 511, 512, 8 * KiB, 1 * MiB, 1 * MiB + 1, 3 * MiB, 9 * MiB, 10 * MiB, 20 * MiB, 33 * MiB)


def _events(seed: int, n: int = 600) -> list[tuple[object, int]]:
    """Allocations (of the sizes above, or near them) and frees of live keys, some at once (transients)."""
    rng = random.Random(seed)
    live: list[int] = []
    events: list[tuple[object, int]] = []
    for key in range(n):
        while live and rng.random() < len(live) / 50:  # the live set hovers around 25 tensors
            events.append((live.pop(rng.randrange(len(live))), -1))
        size = rng.choice(SIZES) + rng.choice((0, 0, 0, rng.randrange(4 * KiB)))
        events.append((key, size))
        live.append(key)
        if rng.random() < 0.15:  # freed before anything else: a transient op
            events.append((live.pop(), -1))
    return events


def _outcome(run, *args, **kwargs) -> tuple | str:
    """`run(*args, **kwargs)`'s statistics, or "oom"."""
    try:
        stats = run(*args, **kwargs)
    except (AllocatorOutOfMemory, ref.OutOfMemory):
        return "oom"
    return tuple(getattr(stats, k) for k in STATS)


@pytest.mark.parametrize("seed", range(24))
def test_random_sequences_replay_as_the_reference(seed):
    events = _events(seed)
    for lag in (0, 1):
        ops, at = schedule_marked(events, len(events) // (2 + seed % 4), lag)
        free = _outcome(ref.replay, events, ref.AllocatorConfig(), None, lag=lag)
        assert _outcome(replay, ops) == free, lag
        shared: list = []  # snapshots of every capacity: one serves another while its capacity never mattered
        assert _outcome(replay_resuming, ops, None, shared, at) == free
        for squeeze in (free[0] // 6, free[0] // 3, 2 * MiB):  # empty the cache and retry, or run out
            cap = free[0] - squeeze
            expected = _outcome(ref.replay, events, ref.AllocatorConfig(), cap, lag=lag)
            assert _outcome(replay, ops, capacity_bytes=cap) == expected, (lag, squeeze)
            assert _outcome(replay_resuming, ops, cap, shared, at) == expected, (lag, squeeze)
            own: list = []
            for _ in range(2):  # the second resumes from the first's snapshot
                assert _outcome(replay_resuming, ops, cap, own, at) == expected, (lag, squeeze)
        assert _outcome(replay_resuming, ops, None, shared, at) == free


def test_a_snapshot_serves_a_capacity_only_while_its_own_never_mattered():
    """Resumed across capacities only from a state that capacity reaches too (the case the random sequences
    reach by chance, pinned): a snapshot past a retry, or holding more than the capacity, serves no other."""
    events = _events(3)
    ops, at = schedule_marked(events, len(events) // 2)
    full = replay(ops)
    snapshots: list = []
    replay_resuming(ops, None, snapshots, at)
    below = snapshots[0].alloc.reserved - 2 * MiB  # less than the snapshot already holds
    expected = _outcome(ref.replay, events, ref.AllocatorConfig(), below)
    assert _outcome(replay_resuming, ops, below, snapshots, at) == expected
    assert _outcome(replay_resuming, ops, full.peak_reserved, snapshots, at) == _outcome(lambda s: s, full)
