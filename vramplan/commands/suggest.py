"""`vramplan suggest`: the best setups that fit a GPU, ranked by an objective, with the reasons in plain words.

Parser and run function for the CLI; the rendering of an `Advice` (rich tables, sentences, JSON) is
`vramplan.report.advice`. Nothing heavy is imported until the command runs: `vramplan --help` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

OBJECTIVE_CHOICES = ("quality", "speed", "memory")  # vramplan.search_space.OBJECTIVES, kept here so import stays light
PLAN_FIELDS = ("param_dtype", "mixed_precision", "quant", "double_quant", "compute_dtype", "kbit_upcast", "rank",
               "alpha", "targets", "lora_dropout", "batch", "grad_accum", "grad_ckpt", "ckpt_reentrant", "attn",
               "optimizer", "sharding", "offload", "quant_storage", "load_in_8bit", "transformers")
NO_PLAN_FITS = 1  # exit code when nothing fits (the output says what would)
HOST_RAM_GIB_MAX = 1_048_576  # 1 PiB: --host-ram's range is (0, this]


def add_suggest_parser(sub: argparse._SubParsersAction) -> None:
    from vramplan.commands.plan_flags import add_plan_arguments

    p = sub.add_parser(
        "suggest",
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
    from vramplan.commands.plan_flags import gpu_dirs as _gpu_dirs
    from vramplan.errors import InputError
    from vramplan.hardware import resolve_gpu
    from vramplan.models import resolve_model
    from vramplan.plan import INT_RANGES, make_plan
    from vramplan.search_space import Request

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
    from vramplan.measure.learning import same_gpu
    from vramplan.measure.store import CalibrationStore

    return tuple(r for r in CalibrationStore(None).records() if same_gpu(r, gpu))


def run_suggest(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.commands.plan_flags import console as _console
    from vramplan.recommend import recommend
    from vramplan.report.advice import advice_json, render_advice

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
