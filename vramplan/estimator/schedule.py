"""The allocation sequence as the allocator sees it: one int per allocator call, for `replay`.

`step_events` records a step as `(key, nbytes)` pairs, or as runs of them (`step_runs`: each step's events once,
under the step's name); `schedule` numbers the allocations (handles), turns each free into the handle it frees,
delays frees by `lag` allocations, and folds an allocation freed at once into one transient op.
A run under a name not seen before (a step's body) starts with no live key of its own, so its schedule is the
same wherever it runs but for the handle numbers: it is scheduled once (`_relative`) and spliced in, its handles
shifted (`_Scheduler.splice`), for both steps and for every plan that shares the step's trace.
"""

from __future__ import annotations

from typing import NamedTuple

Event = tuple[object, int]  # (key, nbytes) allocates; (key, -1) frees
Run = tuple[object, list[Event]]  # (name, events): the keys stand for `(name, key)`; name None: the keys as they are
TRANSIENT = 1 << 62  # a scheduled op at or above it: allocate and at once free (op - TRANSIENT) bytes


def schedule(events: list[Event], lag: int = 0) -> list[int]:
    """The events as the allocator sees them, one int each: `n >= 0` allocates n bytes (the k-th allocation makes
    handle k), `~k` frees handle k, `TRANSIENT + n` allocates n bytes (a handle too) and frees them before
    anything else. `lag`: each free happens `lag` allocations late (a tensor whose last reference dies a little
    after the op that last used it: a Python frame, an autograd node's release); frees still pending at the end
    never happen. A free of a key that holds no allocation is dropped."""
    return schedule_marked(events, 0, lag)[0]


def schedule_marked(events: list[Event], mark: int, lag: int = 0) -> tuple[list[int], int]:
    """`schedule`, and how many of its first ops `events[:mark]` alone decides (its last allocation may still
    become a transient, so it is left out)."""
    return schedule_runs([(None, events[:mark]), (None, events[mark:])], 1, lag)


def schedule_runs(runs: list[Run], mark: int, lag: int = 0) -> tuple[list[int], int]:
    """`schedule_marked` of the events `runs` stand for, `mark` counted in runs: each name keeps its own live
    keys (`(name, key)` never meets a key of another name), so a step's events are scheduled as recorded, never
    rebuilt under its name."""
    s, at = _Scheduler(lag), 0
    for i, (name, events) in enumerate(runs):
        if i == mark:
            at = max(0, len(s.ops) - 1)
        if name is not None and name not in s.lives and lag <= 1:
            s.splice(events, name)
        else:
            s.feed(events, s.lives.setdefault(name, {}))
    return s.ops, (at if mark < len(runs) else max(0, len(s.ops) - 1))


class _Relative(NamedTuple):
    """A run scheduled alone, from handle 0 with nothing live or pending: what `splice` shifts into place."""

    ops: list[int]
    handles: int  # its allocations
    live: dict[object, int]  # its keys still live at its end -> handle
    last: int  # lag 0: the handle of its last op when that is an allocation, else -1
    pending: list[int]  # lag 1: its frees still waiting for an allocation at its end


_RELATIVE: dict[tuple[int, int], tuple[list[Event], int, _Relative]] = {}  # (id(events), lag) -> (events, len, it)


def _relative(events: list[Event], lag: int) -> _Relative:
    """The run's schedule alone, kept for the last few runs (holding the run keeps its id its own; a run that grew
    since is scheduled again)."""
    hit = _RELATIVE.get((id(events), lag))
    if hit is not None and hit[0] is events and hit[1] == len(events):
        return hit[2]
    s, live = _Scheduler(lag), {}
    s.feed(events, live)
    rel = _Relative(s.ops, s.handles, live, s.last, s.pending)
    _RELATIVE[(id(events), lag)] = (events, len(events), rel)
    while len(_RELATIVE) > 8:
        del _RELATIVE[next(iter(_RELATIVE))]
    return rel


class _Scheduler:
    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.lives: dict[object, dict[object, int]] = {}  # run name -> its live keys -> handle
        self.ops: list[int] = []
        self.pending: list[int] = []  # frees waiting `lag` allocations
        self.handles = 0
        self.last = -1  # lag 0: the handle of the last op when it is an allocation

    def feed(self, events: list[Event], live: dict[object, int]) -> None:
        if self.lag:
            self._feed_lagged(events, live)
            return
        ops = self.ops
        append, pop = ops.append, live.pop
        handles, last = self.handles, self.last
        for key, n in events:
            if n >= 0:
                live[key] = last = handles
                handles += 1
                append(n)
            else:
                h = pop(key, -1)
                if h == last >= 0:
                    ops[-1] += TRANSIENT
                elif h >= 0:
                    append(~h)
                last = -1
        self.handles, self.last = handles, last

    def splice(self, events: list[Event], name: object) -> None:
        """`feed` of a run under a name not seen before: none of its frees can meet a handle made before it (their
        keys are its own), so its schedule alone (`_relative`) with every freed handle shifted by the handles
        before it is what `feed` appends. Lag 0: an earlier allocation never becomes a transient through it, and
        `last` is its own. Lag 1: its first op is its first allocation (a free before any allocation of its own
        frees nothing), after which the frees pending from before it follow; its own pending frees wait on."""
        rel, off = _relative(events, self.lag), self.handles
        if not events:
            return
        ops = [op - off if op < 0 else op for op in rel.ops] if off else rel.ops  # ~(h + off) == ~h - off
        if self.lag == 0:
            self.ops += ops
            self.last = rel.last + off if rel.last >= 0 else -1
        elif rel.handles:
            self.ops += ops[:1] + self.pending + ops[1:]
            self.pending = [op - off for op in rel.pending]
        self.handles += rel.handles
        self.lives[name] = {key: h + off for key, h in rel.live.items()}

    def _feed_lagged(self, events: list[Event], live: dict[object, int]) -> None:
        """Frees `lag` allocations late (lag 1 in every simulation: the frees since the last allocation follow the
        next one)."""
        ops, pending, lag, handles = self.ops, self.pending, self.lag, self.handles
        append, pop, wait = ops.append, live.pop, pending.append
        for key, n in events:
            if n >= 0:
                live[key] = handles
                handles += 1
                append(n)
                if len(pending) >= lag:  # each pending free has now waited `lag` allocations (or more)
                    due = len(pending) - lag + 1
                    ops += pending[:due]
                    del pending[:due]
            else:
                h = pop(key, None)
                if h is not None:
                    wait(~h)
        self.handles = handles
