"""`vramplan suggest`: the best setups that fit a GPU, ranked by an objective, with the reasons in plain words.

Parser and run function for the CLI, and the rendering of an `Advice` (rich tables, sentences, JSON). Nothing
heavy is imported until the command runs: `vramplan --help` and `vramplan estimate` stay fast.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

OBJECTIVE_CHOICES = ("quality", "speed", "memory")  # vramplan.search_space.OBJECTIVES, kept here so import stays light
PLAN_FIELDS = ("param_dtype", "mixed_precision", "quant", "double_quant", "compute_dtype", "kbit_upcast", "rank",
               "alpha", "targets", "lora_dropout", "batch", "grad_accum", "grad_ckpt", "ckpt_reentrant", "attn",
               "optimizer", "sharding", "offload", "quant_storage")
NO_PLAN_FITS = 1  # exit code when nothing fits (the output says what would)
HOST_RAM_GIB_MAX = 1_048_576  # 1 PiB: --host-ram's range is (0, this]


def add_suggest_parser(sub: argparse._SubParsersAction) -> None:
    from vramplan.commands.plan_flags import add_plan_arguments

    p = sub.add_parser(
        "suggest", help="recommend the best setups that fit a GPU, and say why",
        description="Search methods, LoRA targets/rank, sequence length, micro-batch x accumulation, checkpointing, "
        "optimizers and, on several GPUs, sharding (DDP, ZeRO-2, FSDP) and CPU offload for the plans that fit; rank "
        "them by an objective and explain the winner. Plan flags pin a knob (e.g. --rank 16, --no-grad-ckpt, "
        "--sharding fsdp).")
    p.add_argument("--model", help="preset name, config.json path, model folder or HF hub id (or from --config)")
    p.add_argument("--gpu", required=True, help="GPU profile (e.g. rtx4090, a100-80gb)")
    p.add_argument("--gpu-dir", action="append", metavar="DIR",
                   help="extra folder of GPU profile .toml files (repeatable; also $VRAMPLAN_GPU_DIR)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs of this kind in one data-parallel job, 1-131072 "
                   "(default 1); the effective batch is split over them and sizes are per GPU")
    p.add_argument("--host-ram", type=float, default=128, metavar="GIB",
                   help="host RAM for state offloaded from the GPUs, all of them together, in GiB: above 0, at most "
                   f"{HOST_RAM_GIB_MAX} (default 128)")
    p.add_argument("--method", help="methods to consider: a comma list of full, lora, qlora (default all)")
    p.add_argument("--objective", choices=OBJECTIVE_CHOICES, default="quality",
                   help="quality: full > LoRA > QLoRA, more adapters, longer sequences; speed: tokens/s; "
                   "memory: the smallest footprint (default quality)")
    p.add_argument("--effective-batch", type=int, default=16,
                   help="sequences per optimizer step = micro-batch x gradient accumulation, 1-1048576 (default 16)")
    p.add_argument("--min-seq", type=int, help="shortest acceptable sequence length, 1 to the model's context "
                   "(default 1024); longer ones up to 8192 are tried too (--seq fixes one)")
    p.add_argument("--headroom", type=float, default=0.1,
                   help="fraction of the GPU's usable memory to leave free, in [0, 1) (default 0.1)")
    p.add_argument("--top", type=int, default=5, help="how many plans to list, 1-100 (default 5)")
    p.add_argument("--no-calibration", action="store_true", help="leave out the stored CUDA runs on this GPU "
                   "(by default they set the allocator reserve and CUDA context, as in estimate --gpu)")
    p.add_argument("--json", action="store_true", help='print {"plans": [...]} (best first) and the explanation')
    add_plan_arguments(p, method_default=False)
    p.set_defaults(run=run_suggest)


def request_from_args(args: argparse.Namespace):
    from vramplan.search_space import Request
    from vramplan.cli import _gpu_dirs
    from vramplan.errors import InputError
    from vramplan.hardware import resolve_gpu
    from vramplan.models import resolve_model
    from vramplan.plan import INT_RANGES, make_plan

    if not (math.isfinite(args.host_ram) and 0 < args.host_ram <= HOST_RAM_GIB_MAX):
        raise InputError(f"--host-ram {args.host_ram:g}: out of range; give the machine's RAM in GiB, above 0 and at "
                         f"most {HOST_RAM_GIB_MAX}, e.g. 128")
    methods = tuple(m.strip() for m in (args.method or "").split(",") if m.strip())
    pinned = {f: getattr(args, f) for f in PLAN_FIELDS if getattr(args, f, None) is not None}
    # the plan owns the ranges of its numbers: check the pinned ones before any search starts
    make_plan(method="lora", **{k: v for k, v in pinned.items() if k in INT_RANGES or k in ("alpha", "lora_dropout")})
    gpu = resolve_gpu(args.gpu, _gpu_dirs(args))
    return Request(model=resolve_model(args.model), gpu=gpu, gpus=args.gpus, host_ram_bytes=int(args.host_ram * 2**30),
                   objective=args.objective,
                   effective_batch=args.effective_batch, headroom=args.headroom, seq=args.seq, min_seq=args.min_seq,
                   methods=methods, top=args.top, pinned=pinned, gpu_dirs=_gpu_dirs(args),
                   calibration=() if args.no_calibration else _stored_runs(gpu))


def _stored_runs(gpu) -> tuple:
    """The calibration store's CUDA runs on this GPU (vramplan.measure.learning.same_gpu)."""
    from vramplan.measure.store import CalibrationStore
    from vramplan.measure.learning import same_gpu

    return tuple(r for r in CalibrationStore(None).records() if same_gpu(r, gpu))


def run_suggest(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.recommend import recommend
    from vramplan.cli import _console

    req = request_from_args(args)
    console = _console(args)
    update, close = _lazy_progress()
    try:
        advice = recommend(req, update)
    finally:
        close()
    if args.json:
        report.print_json(advice_json(advice))
    else:
        render_advice(console, advice)
    if req.calibration and advice.plans:  # say where plan 1's reserve and context came from, as estimate does
        from vramplan.measure.learning import learn, local_versions

        first = advice.plans[0].estimate
        learned = learn(first, req.calibration, req.gpu, local_versions())
        if learned is not None:
            print(learned.words(first), file=sys.stderr if args.json else sys.stdout)
    return 0 if advice.plans else NO_PLAN_FITS


def _lazy_progress(delay_s: float = 0.3):
    """A progress bar on stderr that appears only if the search runs past `delay_s` (it should not)."""
    start, state = time.perf_counter(), {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            from rich.console import Console

            console = Console(stderr=True)
            if time.perf_counter() - start < delay_s or not console.is_terminal:
                return
            from rich.progress import Progress

            state["bar"] = Progress(console=console, transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task("searching plans", total=total)
        state["bar"].update(state["task"], completed=done, total=total)

    def close() -> None:
        if "bar" in state:
            state["bar"].stop()

    return update, close


# Words ------------------------------------------------------------------------------------------------------


def gib(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB"


def speed_words(ratio: float) -> str:
    if ratio >= 1.005:
        return f"~{(ratio - 1) * 100:.0f}% faster"
    if ratio <= 0.995:
        return f"~{(1 - ratio) * 100:.0f}% slower"
    return "same speed"


def describe(plan: dict) -> str:
    """'LoRA r=64 on all-linear, 16-bit base' style summary of a plan's method."""
    if plan["method"] == "full":
        return "full fine-tuning"
    adapters = f"r={plan['rank']} on {plan['targets']} targets"
    if plan["method"] == "lora":
        return f"LoRA ({adapters}) on the {plan['param_dtype']} base"
    dq = " + double quant" if plan["double_quant"] else ""
    return f"QLoRA ({plan['quant'].upper()}{dq}, {adapters})"


def _run_words(plan: dict) -> str:
    ckpt = "gradient checkpointing on" if plan["grad_ckpt"] else "no gradient checkpointing"
    words = (f"seq {plan['seq']}, micro-batch {plan['batch']} x {plan['grad_accum']} accumulation, {ckpt}, "
             f"{plan['optimizer']}")
    if plan.get("gpus", 1) > 1:
        words = f"{plan['gpus']} GPUs with {_dist(plan)}, {words} (per GPU)"
        from vramplan.plan import PARAM_SHARDING, TrainingPlan

        p = TrainingPlan(**plan)
        if p.method == "qlora" and p.parallelism in PARAM_SHARDING:
            words += f"; the 4-bit weights stored as {p.storage_dtype} (bnb_4bit_quant_storage) so that they shard"
    return words


def _dist(plan: dict) -> str:
    from vramplan.recommend import dist_words

    return dist_words(plan["sharding"] or "ddp", plan["offload"])


def _cards(a: Any) -> str:
    return f"{a.gpus} x {a.gpu}" if a.gpus > 1 else a.gpu


def _per_gpu(a: Any) -> str:
    return " per GPU" if a.gpus > 1 else ""


def explain(a: Any) -> list[str]:
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
    lines = [f"Run {describe(plan)}: {_run_words(plan)}. It takes {gib(best.gpu_bytes)} of {each}{a.gpu}'s "
             f"{gib(a.usable_bytes)} ({gib(a.usable_bytes - best.gpu_bytes)} free){host}, "
             f"~{best.tokens_per_s:,.0f} tokens/s."]
    if a.objective == "quality":
        why = "; ".join(_blocker_words(a, b) for b in a.blockers)
        if why:
            lines.append(f"It is the most capable plan that fits: {why}.")
        else:
            lines.append("It is the most capable plan that fits" + (": every weight trains." if plan["method"] == "full"
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
                     f"at seq {plan['seq']} is {lim.max_batch}.")
    return lines


def _blocker_words(a: Any, b: Any) -> str:
    """Why a better method is not plan 1: what its leanest plan needs."""
    per = _per_gpu(a)
    if not b.host_fits:
        return (f"{describe(b.plan)} needs {gib(b.host_bytes)} of host RAM for {_dist(b.plan)} (more than "
                f"--host-ram {gib(a.host_ram_bytes)}), at {gib(b.gpu_bytes)}{per}")
    host = f" and {gib(b.host_bytes)} of host RAM" if b.host_bytes else ""
    if b.smallest_gpu and b.smallest_gpu_plan:  # the smallest GPU runs another version: give each its own size
        other = b.smallest_gpu_plan
        return (f"{describe(b.plan)} needs at least {gib(b.gpu_bytes)}{per}{host} in {_dtype_words(b.plan)} on the "
                f"{a.gpu}; in {_dtype_words(other)} it takes {gib(b.smallest_gpu_bytes)} (smallest GPU that fits: "
                f"{b.smallest_gpu})")
    smallest = f" (smallest GPU that fits: {b.smallest_gpu})" if b.smallest_gpu else ""
    return f"{describe(b.plan)} needs at least {gib(b.gpu_bytes)}{per}{host}{smallest}"


def _dtype_words(plan: dict) -> str:
    """'bf16' or 'fp32 weights with fp16 autocast'."""
    if plan.get("mixed_precision"):
        return f"{plan['param_dtype']} weights with {plan['mixed_precision']} autocast"
    return plan["param_dtype"]


def _contrast_words(a: Any, plan: dict) -> list[str]:
    c = a.contrast
    if c is None:
        return []
    best = a.plans[0]
    if c.plan["method"] == "qlora":
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
        recompute = ", the backward and the recompute" if plan["grad_ckpt"] else " and the backward"
        cost = (f"but run {speed_words(c.speed_ratio)}: every 4-bit weight is dequantized in the forward{recompute}"
                if c.speed_ratio < 0.995 else "at about the same speed")
        if c.speed_ratio >= 1.005 and a.gpus > 1:  # sharded 4-bit weights: fewer bytes to gather and offload
            cost = f"and run {speed_words(c.speed_ratio)}: its 4-bit weights are fewer bytes to gather and offload"
        return [f"QLoRA with the same adapters would take {gib(c.gpu_bytes)} instead of {gib(best.gpu_bytes)}{buys}, "
                f"{cost}."]
    if c.fits:
        return [f"LoRA on the 16-bit base would also fit ({gib(c.gpu_bytes)}) and run {speed_words(c.speed_ratio)}."]
    if c.gpu_bytes <= a.limit_bytes:
        return [f"LoRA on the 16-bit base would need {gib(c.host_bytes)} of host RAM for {_dist(c.plan)}: more than "
                f"--host-ram {gib(a.host_ram_bytes)}, so the base must be 4-bit."]
    per = _per_gpu(a)
    return [f"LoRA on the 16-bit base would need {gib(c.gpu_bytes)}{per}: more than the {gib(a.limit_bytes)} allowed, "
            "so the base must be 4-bit."]


def assumptions_words(a: Any) -> str:
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


# Rendering --------------------------------------------------------------------------------------------------


def render_advice(console: Any, a: Any) -> None:
    from rich.table import Table

    per = _per_gpu(a)
    host = f", host RAM for offload {gib(a.host_ram_bytes)} (--host-ram)" if a.gpus > 1 and a.host_ram_bytes else ""
    console.print(f"[bold]{a.model}[/bold] on [bold]{_cards(a)}[/bold]: {gib(a.usable_bytes)} usable, plans up to "
                  f"{gib(a.limit_bytes)}{per} ({a.headroom:.0%} headroom){host}; objective {a.objective}, effective "
                  f"batch {a.effective_batch}")
    if a.assumptions.get("dtype_note"):
        console.print(f"Note: {a.assumptions['dtype_note']}.")
    if a.plans:
        multi = a.gpus > 1
        table = Table(title="Plans that fit, best first (GiB" + (" per GPU" if multi else "") + "; free = usable - "
                      "reserved - context - paged states)", title_justify="left")
        cols = ["method", "quant", "LoRA", "seq", "batch", "ckpt", "optimizer"]
        cols += ["sharding", "offload", "host"] if multi else []
        cols += ["peak", "reserved", "free", "tok/s"]
        for col in cols:
            table.add_column(col, justify="right" if col in ("seq", "peak", "reserved", "free", "tok/s", "host")
                             else "left")
        for r in a.plans:
            p = r.estimate.plan
            quant = f"{p['quant']}{'+dq' if p['double_quant'] else ''}" if p["method"] == "qlora" else p["param_dtype"]
            row = [p["method"], quant, f"r{p['rank']} {p['targets']}" if p["rank"] else "-", str(p["seq"]),
                   f"{p['batch']}x{p['grad_accum']}", "on" if p["grad_ckpt"] else "off", p["optimizer"]]
            if multi:
                row += [p["sharding"] or "ddp", p["offload"], f"{r.host_bytes / 2**30:.1f}"]
            row += [f"{r.estimate.peak_bytes / 2**30:.2f}", f"{r.estimate.reserved_bytes / 2**30:.2f}",
                    f"{(a.usable_bytes - r.gpu_bytes) / 2**30:.2f}", f"{r.tokens_per_s:,.0f}"]
            table.add_row(*row)
        console.print(table)
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


def render_nearest(console: Any, a: Any) -> None:
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
            smallest += f", {gib(o.smallest_gpu_bytes)} in {_dtype_words(o.smallest_gpu_plan)}"
        dist = [f"{o.plan['sharding'] or 'ddp'}+{o.plan['offload']}", gib(o.host_bytes)] if multi else []
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


def advice_json(a: Any) -> dict:
    """`{"plans": [...]}` best first, each with `plan` (as in `estimate --json`), bytes and tokens/s; and the why."""
    plans = [{"plan": r.estimate.plan, "peak_bytes": r.estimate.peak_bytes, "reserved_bytes": r.estimate.reserved_bytes,
              "host_bytes": r.host_bytes,
              "total_gpu_bytes": r.estimate.total_gpu_bytes, "paged_bytes": r.estimate.paged_bytes,
              "gpu_bytes": r.gpu_bytes, "headroom_bytes": a.usable_bytes - r.gpu_bytes,
              "tokens_per_s": round(r.tokens_per_s, 1), "step_time_s": round(r.step_time_s, 4)} for r in a.plans]
    out = a.model_dump(mode="json", exclude={"plans", "seconds"})
    return {"plans": plans, **out, "explanation": explain(a), "search_seconds": round(a.seconds, 3)}
