"""`vramplan suggest`: the recommendation (`vramplan.recommend.Advice`) in plain words, rich tables and JSON.

Plans are read typed (`TrainingPlan`): the advice's alternatives carry a plan's JSON, read back with `as_plan`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.record import plain
from vramplan.report.plan_words import as_plan, dist_words, method_words, run_words

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from vramplan.plan import TrainingPlan
    from vramplan.recommend import Advice, Contrast, MethodNeeds


def gib(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB"


def speed_words(ratio: float) -> str:
    if ratio >= 1.005:
        return f"~{(ratio - 1) * 100:.0f}% faster"
    if ratio <= 0.995:
        return f"~{(1 - ratio) * 100:.0f}% slower"
    return "same speed"


def _cards(a: Advice) -> str:
    return f"{a.gpus} x {a.gpu}" if a.gpus > 1 else a.gpu


def _per_gpu(a: Advice) -> str:
    return " per GPU" if a.gpus > 1 else ""


def explain(a: Advice) -> list[str]:
    """The plain-language case for the winner (or, when nothing fits, the verdict)."""
    if not a.plans:
        per = _per_gpu(a)
        host = f" (or more than the {gib(a.host_ram_bytes)} of host RAM)" if a.gpus > 1 and a.host_ram_bytes else ""
        return [f"Nothing fits {a.model} on {_cards(a)}: every plan needs more than the {gib(a.limit_bytes)}{per} "
                f"allowed ({gib(a.usable_bytes)} usable less {a.headroom:.0%} headroom){host}."]
    best = a.plans[0]
    plan = best.estimate.plan
    each = "each " if a.gpus > 1 else "the "
    host = f" and {gib(best.host_bytes)} of host RAM" if best.host_bytes else ""
    lines = [f"Run {method_words(plan)}: {run_words(plan)}. It takes {gib(best.gpu_bytes)} of {each}{a.gpu}'s "
             f"{gib(a.usable_bytes)} ({gib(a.usable_bytes - best.gpu_bytes)} free){host}, "
             f"~{best.tokens_per_s:,.0f} tokens/s."]
    if a.objective == "quality":
        why = "; ".join(_blocker_words(a, b) for b in a.blockers)
        if why:
            lines.append(f"It is the most capable plan that fits: {why}.")
        else:
            lines.append("It is the most capable plan that fits" + (": every weight trains." if plan.method == "full"
                                                                     else "."))
    elif a.objective == "speed":
        lines.append("It is the fastest plan that fits.")
    else:
        lines.append(f"It has the smallest footprint that trains: peak {gib(best.estimate.peak_bytes)}.")
    lines += _contrast_words(a, plan)
    lim = a.limits
    if lim and lim.max_seq:
        cap = " (the model's limit)" if lim.max_seq == lim.seq_cap else ""
        lines.append(f"At this setup the longest sequence that fits is {lim.max_seq}{cap}, and the largest micro-batch "
                     f"at seq {plan.seq} is {lim.max_batch}.")
    return lines


def _blocker_words(a: Advice, b: MethodNeeds) -> str:
    """Why a better method is not plan 1: what its leanest plan needs."""
    per, plan = _per_gpu(a), as_plan(b.plan)
    if not b.host_fits:
        return (f"{method_words(plan)} needs {gib(b.host_bytes)} of host RAM for {dist_words(plan)} (more than "
                f"--host-ram {gib(a.host_ram_bytes)}), at {gib(b.gpu_bytes)}{per}")
    host = f" and {gib(b.host_bytes)} of host RAM" if b.host_bytes else ""
    if b.smallest_gpu and b.smallest_gpu_plan:  # the smallest GPU runs another version: give each its own size
        other = as_plan(b.smallest_gpu_plan)
        return (f"{method_words(plan)} needs at least {gib(b.gpu_bytes)}{per}{host} in {_dtype_words(plan)} on the "
                f"{a.gpu}; in {_dtype_words(other)} it takes {gib(b.smallest_gpu_bytes)} (smallest GPU that fits: "
                f"{b.smallest_gpu})")
    smallest = f" (smallest GPU that fits: {b.smallest_gpu})" if b.smallest_gpu else ""
    return f"{method_words(plan)} needs at least {gib(b.gpu_bytes)}{per}{host}{smallest}"


def _dtype_words(plan: TrainingPlan) -> str:
    """'bf16' or 'fp32 weights with fp16 autocast'."""
    if plan.mixed_precision:
        return f"{plan.param_dtype} weights with {plan.mixed_precision} autocast"
    return plan.param_dtype


def _contrast_words(a: Advice, plan: TrainingPlan) -> list[str]:
    """QLoRA beside a LoRA winner, or LoRA on the 16-bit base beside a QLoRA winner."""
    c = a.contrast
    if c is None:
        return []
    if as_plan(c.plan).method == "qlora":
        return _qlora_contrast_words(a, c, plan)
    if c.fits:
        return [f"LoRA on the 16-bit base would also fit ({gib(c.gpu_bytes)}) and run {speed_words(c.speed_ratio)}."]
    if c.gpu_bytes <= a.limit_bytes:
        return [f"LoRA on the 16-bit base would need {gib(c.host_bytes)} of host RAM for "
                f"{dist_words(as_plan(c.plan))}: more than --host-ram {gib(a.host_ram_bytes)}, so the base must be "
                "4-bit."]
    per = _per_gpu(a)
    return [f"LoRA on the 16-bit base would need {gib(c.gpu_bytes)}{per}: more than the {gib(a.limit_bytes)} allowed, "
            "so the base must be 4-bit."]


def _qlora_contrast_words(a: Advice, c: Contrast, plan: TrainingPlan) -> list[str]:
    """What QLoRA with the winner's adapters would buy (longer sequences, larger micro-batches) and cost (speed)."""
    best = a.plans[0]
    if not c.fits:
        return [f"QLoRA would take {gib(c.gpu_bytes)}: it does not fit either."]
    gains = []
    if c.limits and a.limits and (c.limits.max_seq or 0) > (a.limits.max_seq or 0):
        gains.append(f"sequences up to {c.limits.max_seq} (vs {a.limits.max_seq})")
    if c.limits and a.limits and (c.limits.max_batch or 0) > (a.limits.max_batch or 0):
        gains.append(f"micro-batches up to {c.limits.max_batch} (vs {a.limits.max_batch})")
    if c.gpu_bytes >= best.gpu_bytes:
        return [f"QLoRA would save nothing here: {gib(c.gpu_bytes)} (activations dominate, and QLoRA's fp32 "
                "upcast widens them)."]
    buys = f", room for {' or '.join(gains)}" if gains else ""
    recompute = ", the backward and the recompute" if plan.grad_ckpt else " and the backward"
    cost = (f"but run {speed_words(c.speed_ratio)}: every 4-bit weight is dequantized in the forward{recompute}"
            if c.speed_ratio < 0.995 else "at about the same speed")
    if c.speed_ratio >= 1.005 and a.gpus > 1:  # sharded 4-bit weights: fewer bytes to gather and offload
        cost = f"and run {speed_words(c.speed_ratio)}: its 4-bit weights are fewer bytes to gather and offload"
    return [f"QLoRA with the same adapters would take {gib(c.gpu_bytes)} instead of {gib(best.gpu_bytes)}{buys}, "
            f"{cost}."]


def assumptions_words(a: Advice) -> str:
    """What the speed model is (vramplan.speed: each kernel timed by what bounds it on this GPU), in the winner's
    own terms: the MFU it comes to and its tokens/s interval (every rate at its low / high end)."""
    s = a.assumptions
    if s.get("mfu") is None:
        return ("tokens/s: a kernel-by-kernel estimate for ranking, not a benchmark (GEMMs, attention, "
                "dequantization and bandwidth-bound ops, each timed by what bounds it on the GPU).")
    return (f"tokens/s: a kernel-by-kernel estimate for ranking, not a benchmark: plan 1 comes to {s['mfu']:.0%} MFU "
            f"of {s['peak_tflops']:g} TFLOPs ({s['tokens_per_s_low']:,.0f}-{s['tokens_per_s_high']:,.0f} tokens/s "
            f"with every rate at its low / high end; {s['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s); LoRA/QLoRA skip "
            "the frozen weights' gradients, checkpointing recomputes the forward, QLoRA dequantizes every 4-bit "
            "weight in the forward, the backward and the recompute.")


def render_advice(console: Console, a: Advice) -> None:
    per = _per_gpu(a)
    host = f", host RAM for offload {gib(a.host_ram_bytes)} (--host-ram)" if a.gpus > 1 and a.host_ram_bytes else ""
    console.print(f"[bold]{a.model}[/bold] on [bold]{_cards(a)}[/bold]: {gib(a.usable_bytes)} usable, plans up to "
                  f"{gib(a.limit_bytes)}{per} ({a.headroom:.0%} headroom){host}; objective {a.objective}, effective "
                  f"batch {a.effective_batch}")
    if a.assumptions.get("dtype_note"):
        console.print(f"Note: {a.assumptions['dtype_note']}.")
    if a.plans:
        console.print(_plans_table(a))
    for line in explain(a):
        console.print(line)
    if a.knobs:
        console.print("[bold]What each knob costs[/bold] (from plan 1, GPU memory incl. context and paged states):")
        for k in a.knobs:
            verdict = "fits" if k.fits else "[red]does not fit[/red]"
            if not k.fits and a.host_ram_bytes and k.host_bytes > a.host_ram_bytes:
                verdict = f"[red]does not fit: {gib(k.host_bytes)} of host RAM[/red]"
            sign = "+" if k.gpu_bytes_delta >= 0 else "-"
            console.print(f"  {k.knob}: {sign}{gib(abs(k.gpu_bytes_delta))}, {speed_words(k.speed_ratio)} ({verdict})")
    if a.nearest:
        render_nearest(console, a)
    speed_note = assumptions_words(a) + " " if a.plans else ""
    console.print(f"[dim]{speed_note}Searched {a.evaluated} plans in {a.seconds:.2f} s.[/dim]")


def _plans_table(a: Advice) -> Table:
    """The plans that fit, best first: one row each (a rich Table)."""
    from rich.table import Table

    multi = a.gpus > 1
    table = Table(title="Plans that fit, best first (GiB" + (" per GPU" if multi else "") + "; free = usable - "
                  "reserved - context - paged states)", title_justify="left")
    cols = ["method", "quant", "LoRA", "seq", "batch", "ckpt", "optimizer"]
    cols += ["sharding", "offload", "host"] if multi else []
    cols += ["peak", "reserved", "free", "tok/s"]
    for col in cols:
        right = col in ("seq", "peak", "reserved", "free", "tok/s", "host")
        table.add_column(col, justify="right" if right else "left")
    for r in a.plans:
        p = r.estimate.plan
        quant = f"{p.quant}{'+dq' if p.double_quant else ''}" if p.method == "qlora" else p.param_dtype
        row = [p.method, quant, f"r{p.rank} {p.targets}" if p.rank else "-", str(p.seq), f"{p.batch}x{p.grad_accum}",
               "on" if p.grad_ckpt else "off", p.optimizer or ""]
        if multi:
            row += [p.sharding or "ddp", p.offload, f"{r.host_bytes / 2**30:.1f}"]
        row += [f"{r.estimate.peak_bytes / 2**30:.2f}", f"{(r.estimate.reserved_bytes or 0) / 2**30:.2f}",
                f"{(a.usable_bytes - r.gpu_bytes) / 2**30:.2f}", f"{r.tokens_per_s:,.0f}"]
        table.add_row(*row)
    return table


def render_nearest(console: Console, a: Advice) -> None:
    from rich.table import Table

    from vramplan.recommend import GPU_COUNT_CAP

    n, multi = a.nearest, a.gpus > 1
    table = Table(title="Nearest options (leanest plan per method" + (", per GPU" if multi else "") + ")",
                  title_justify="left")
    cols = ["method", "needs", *(["sharding", "host RAM"] if multi else []), "weights alone",
            "smallest GPU that fits", "optimizer states on CPU", f"{a.gpu}s with FSDP", "+ CPU offload"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("method", "sharding", "smallest GPU that fits") else "right")
    for o in n.options:
        more = ", ..." if len(o.same_size_gpus) > 2 else ""
        also = f" (also {', '.join(o.same_size_gpus[:2])}{more})" if o.same_size_gpus else ""
        smallest = (o.smallest_gpu or "none") + also if o.host_fits else "- (host RAM)"
        if o.smallest_gpu and o.smallest_gpu_plan:  # that GPU runs another version of the plan: its own size
            smallest += f", {gib(o.smallest_gpu_bytes)} in {_dtype_words(as_plan(o.smallest_gpu_plan))}"
        dist = [f"{as_plan(o.plan).sharding or 'ddp'}+{as_plan(o.plan).offload}", gib(o.host_bytes)] if multi else []
        table.add_row(o.method, gib(o.gpu_bytes), *dist, gib(o.weights_bytes), smallest,
                      gib(o.offloaded_gpu_bytes) if o.offloaded_gpu_bytes else "-",
                      str(o.fsdp_gpus or f"> {GPU_COUNT_CAP}"), str(o.fsdp_offload_gpus or f"> {GPU_COUNT_CAP}"))
    console.print(table)
    if n.shorter_seq:
        console.print(f"A shorter sequence: {n.shorter_seq_method} fits at seq {n.shorter_seq} or less.")
    elif any(o.gpu_bytes <= a.limit_bytes and not o.host_fits for o in n.options):
        console.print(f"Host RAM is what stops it: the plans that fit the GPUs offload more than --host-ram "
                      f"{gib(a.host_ram_bytes)}.")
    else:
        console.print("No shorter sequence helps: the weights and states alone do not fit.")
    console.print(f"GPU counts: the fewest {a.gpu}s whose per-GPU estimate fits with FSDP (every layer sharded, "
                  "fused AdamW), without and with its CPU offload (host RAM not counted; try them with --gpus N). "
                  "Optimizer states on CPU: DeepSpeed ZeRO-Offload on one GPU.")


def advice_json(a: Advice) -> dict:
    """`{"plans": [...]}` best first, each with `plan` (as in `estimate --json`), bytes and tokens/s; and the why."""
    plans = [{"plan": r.estimate.plan.to_dict(), "peak_bytes": r.estimate.peak_bytes,
              "reserved_bytes": r.estimate.reserved_bytes,
              "host_bytes": r.host_bytes,
              "total_gpu_bytes": r.estimate.total_gpu_bytes, "paged_bytes": r.estimate.paged_bytes,
              "gpu_bytes": r.gpu_bytes, "headroom_bytes": a.usable_bytes - r.gpu_bytes,
              "tokens_per_s": round(r.tokens_per_s, 1), "step_time_s": round(r.step_time_s, 4)} for r in a.plans]
    out = {name: plain(getattr(a, name)) for name in a.field_names() if name not in ("plans", "seconds")}
    return {"plans": plans, **out, "explanation": explain(a), "search_seconds": round(a.seconds, 3)}
