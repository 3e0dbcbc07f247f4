"""The search: the plan space's cells visited best-first, each run by its best variant, ranked by an objective.

Search without a grid: memory grows with micro-batch and sequence length, so the largest micro-batch that fits
is found by bisection, and cells are visited best-first by an optimistic bound (the quality tuple, or the speed
of the fastest variant ignoring memory) so the search stops once `top` cells beat every bound left. A plan fits
when its reserved memory, CUDA context and paged optimizer states (which live on the card unless it runs out,
and then page over PCIe every step) stay within the usable memory less the headroom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vramplan.errors import PlanError
from vramplan.plan import TrainingPlan
from vramplan.search_space import (
    DIST_CHOICES,
    METHOD_TIER,
    Candidate,
    Probe,
    adapter_ladder,
    seq_ladder,
)
from vramplan.speed import step_time

# Variants of one cell ---------------------------------------------------------------------------------------

Cell = tuple[str, "tuple[str, int] | None", int]  # (method, adapter, seq)


def last_true(holds: Callable[[int], bool], lo: int, hi: int, *, gallop: bool = False) -> int | None:
    """The largest n in [lo, hi] for which `holds(n)`, where `holds` is true up to some n and false above it (memory
    grows with the micro-batch and the sequence); None when `holds(lo)` is false. Bisection; with `gallop`, first
    lo, 2 lo, 4 lo, ... (cheap when the answer is near lo, and lo >= 1). The one bisection of the search and its
    explanations (`first_true` is its mirror)."""
    if not holds(lo):
        return None
    good, bad = lo, hi + 1
    while gallop:
        nxt = min(good * 2, hi)
        if nxt == good:
            return good
        if not holds(nxt):
            bad = nxt
            break
        good = nxt
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if holds(mid) else (good, mid)
    return good


def last_true_bounded(holds: Callable[[int], bool], may_hold: Callable[[int], bool], lo: int, hi: int,
                      *, gallop: bool = False) -> int | None:
    """`last_true(holds, lo, hi)` for an expensive `holds` with a cheap necessary condition `may_hold` (a plan's
    device floor before its allocator simulation): bisect on `may_hold`, test its answer with `holds`, and when that
    fails gallop down from it (1, 2, 4, ... below) and bisect the last step. The same answer wherever both grow
    monotonically false; a simulation or two when the floor is tight, instead of one per bisection step."""
    top = last_true(may_hold, lo, hi, gallop=gallop)
    if top is None or holds(top):
        return top
    bad, step = top, 1
    while True:
        n = max(top - step, lo)
        if holds(n):
            good = n
            break
        if n == lo:
            return None
        bad, step = n, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if holds(mid) else (good, mid)
    return good


def first_true(holds: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The smallest n in [lo, hi] for which `holds(n)`, where `holds` is false below some n and true from it (per-GPU
    memory falls as the GPUs grow): lo, 2 lo, 4 lo, ... until it holds, then bisection; None when it never does."""
    bad, n = lo - 1, lo
    while not holds(n):
        bad, n = n, n * 2
        if n > hi:
            return None
    good = n
    while good - bad > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if holds(mid) else (good, mid)
    return good


def largest_batch(probe: Probe, build: Callable[[int], TrainingPlan], choices: list[int]) -> int | None:
    """The largest micro-batch among `choices` (ascending) whose plan fits; None if none does (the device floor
    bounds it before any allocator simulation: `last_true_bounded`)."""
    i = last_true_bounded(lambda i: probe.fits(build(choices[i])), lambda i: probe.may_fit(build(choices[i])),
                          0, len(choices) - 1)
    return None if i is None else choices[i]


def variants(probe: Probe, method: str) -> list[tuple[bool, str, tuple[str | None, str]]]:
    """(checkpointing, optimizer, (sharding, offload)) for a method: every combination the request allows."""
    return [(ckpt, opt, dist) for dist in probe.dist_choices() for ckpt in probe.ckpt_choices()
            for opt in probe.optimizer_choices(method, dist)]


SPEED_TIE = 0.005  # tokens/s this close are a tie: below what the roofline model can tell apart


def _faster(cand: Candidate, best: Candidate) -> bool:
    """Is `cand` the better variant? More tokens/s; on a tie the simpler engine (earlier in DIST_CHOICES: DDP
    before DeepSpeed before FSDP, no offload before offload), then less memory."""
    if abs(cand.tokens_per_s - best.tokens_per_s) > SPEED_TIE * best.tokens_per_s:
        return cand.tokens_per_s > best.tokens_per_s
    return (_dist_rank(cand.plan), cand.gpu_bytes) < (_dist_rank(best.plan), best.gpu_bytes)


def _dist_rank(plan: TrainingPlan) -> int:
    pair = (plan.parallelism, plan.offload)
    return DIST_CHOICES.index(pair) if pair in DIST_CHOICES else len(DIST_CHOICES)


def fastest_variant(probe: Probe, cell: Cell) -> Candidate | None:
    """The fitting (checkpointing, optimizer, sharding, micro-batch) with the most tokens/s (see `_faster`)."""
    method, adapter, seq = cell
    best: Candidate | None = None
    batches = probe.batch_choices()
    for ckpt, opt, dist in variants(probe, method):
        def build(b: int, ckpt: bool = ckpt, opt: str = opt, dist: tuple = dist) -> TrainingPlan:
            return probe.plan(method, adapter, seq, ckpt, opt, b, dist)

        if best and step_time(probe.req.model, build(batches[-1]), probe.req.gpu).tokens_per_s < best.tokens_per_s:
            continue  # even its largest micro-batch would be slower than what we have
        mb = largest_batch(probe, build, batches)
        if mb is not None:
            cand = probe.evaluate(build(mb))
            if best is None or _faster(cand, best):
                best = cand
    return best


def leanest_variant(probe: Probe, cell: Cell) -> Candidate | None:
    """The fitting variant with the least memory on the card at the smallest micro-batch; ties go to speed."""
    method, adapter, seq = cell
    mb = probe.batch_choices()[0]
    cands = [probe.evaluate(probe.plan(method, adapter, seq, ckpt, opt, mb, dist))
             for ckpt, opt, dist in variants(probe, method)]
    return least_on_card([c for c in cands if probe.host_fits(c)], lambda c: (c.peak_bytes, -c.tokens_per_s),
                         probe.limit_bytes)


def least_on_card(cands: list[Candidate], tie: Callable[[Candidate], tuple], limit_bytes: int | None = None
                  ) -> Candidate | None:
    """The candidate with the least `gpu_bytes` (then `tie`), among those within `limit_bytes` if given. Exact
    branch and bound: visited by their floor (`Candidate.floor_bytes` <= `gpu_bytes`), a candidate whose floor is
    above the best simulated total cannot win, nor can any after it, so they are never simulated."""
    best: Candidate | None = None
    for c in sorted(cands, key=lambda c: c.floor_bytes):
        if limit_bytes is not None and c.floor_bytes > limit_bytes:
            break
        if best is not None and c.floor_bytes > best.gpu_bytes:
            break
        if limit_bytes is not None and c.gpu_bytes > limit_bytes:
            continue
        if best is None or (c.gpu_bytes, *tie(c)) < (best.gpu_bytes, *tie(best)):
            best = c
    return best


# Ranking ----------------------------------------------------------------------------------------------------


def adapter_index(probe: Probe, plan: TrainingPlan) -> int:
    ladder = adapter_ladder(probe.req.pinned)
    return ladder.index((plan.targets, plan.rank)) if (plan.targets, plan.rank) in ladder else 0


def score(probe: Probe, c: Candidate) -> tuple:
    """Higher is better. quality: method, adapter capacity, sequence, then speed; speed; memory (least first)."""
    quality = (METHOD_TIER[c.plan.method], adapter_index(probe, c.plan), c.plan.seq)
    if probe.req.objective == "quality":
        return (*quality, c.tokens_per_s)
    if probe.req.objective == "speed":
        return (c.tokens_per_s, *quality)
    return (-c.gpu_bytes, -c.peak_bytes, *quality, c.tokens_per_s)


def cells(probe: Probe) -> list[Cell]:
    out: list[Cell] = []
    for method in probe.methods:
        adapters: Iterable = adapter_ladder(probe.req.pinned) if method != "full" else [None]
        out += [(method, a, s) for a in adapters for s in seq_ladder(probe.req)]
    return out


def bound(probe: Probe, cell: Cell) -> tuple:
    """An optimistic score for a cell, before any estimate: nothing it contains can score higher."""
    method, adapter, seq = cell
    tier = (METHOD_TIER[method], adapter_ladder(probe.req.pinned).index(adapter) if adapter else 0, seq)
    if probe.req.objective == "quality":
        return (*tier, float("inf"))
    if probe.req.objective == "speed":
        fastest = max(step_time(probe.req.model, probe.plan(method, adapter, seq, ck, opt, probe.batch_choices()[-1],
                                                            dist), probe.req.gpu).tokens_per_s
                      for ck, opt, dist in variants(probe, method))
        return (fastest, *tier)
    return (0,)  # memory: no cheap bound; every cell is evaluated (one micro-batch each)


def search(probe: Probe, progress: Callable[[int, int], None] | None = None) -> list[Candidate]:
    """The best `top` cells, each run by its best variant for the objective, best first."""
    todo = sorted(((bound(probe, c), c) for c in cells(probe)), key=lambda bc: bc[0], reverse=True)
    pick = leanest_variant if probe.req.objective == "memory" else fastest_variant
    found: list[Candidate] = []
    for i, (best_possible, cell) in enumerate(todo):
        if progress:
            progress(i, len(todo))
        if len(found) >= probe.req.top and best_possible <= score(probe, found[-1]):
            break
        cand = pick(probe, cell)
        if cand is not None:
            found = sorted([*found, cand], key=lambda c: score(probe, c), reverse=True)[: probe.req.top]
    if progress:
        progress(len(todo), len(todo))
    return found


def check_pins(probe: Probe) -> None:
    """Fail early, on one line, when the pinned flags make no valid plan for any allowed method."""
    if not probe.methods:
        raise PlanError("the plan flags given (LoRA-only and QLoRA-only) rule out every method")
