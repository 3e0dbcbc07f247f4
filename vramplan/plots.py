"""Figures of training plans (matplotlib, the optional extra `plot`): memory vs sequence length and vs
micro-batch for full/LoRA/QLoRA with the GPU's usable line, the stacked breakdown of the peak by component, and
the per-phase timeline. Every number comes from `vramplan.api.estimate`; nothing here models memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vramplan.errors import InputError
from vramplan.units import GiB

if TYPE_CHECKING:
    from vramplan.estimator.result import MemoryEstimate

KINDS = ("seq", "batch", "breakdown", "timeline")
METHODS = ("full", "lora", "qlora")
SEQS = (256, 512, 1024, 2048, 4096, 8192)
BATCHES = (1, 2, 4, 8, 16)
COLORS = {"full": "#c0392b", "lora": "#2874a6", "qlora": "#239b56"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("vramplan plot needs matplotlib: pip install 'vramplan[plot]'") from None
    return plt


def _total(e) -> int:
    return e.total_gpu_bytes if e.total_gpu_bytes is not None else e.peak_bytes


def plan_factory(args) -> Callable:
    """`plan_for(method, **update)`: the command line's plan for one method (`plan_flags.method_plan`: options
    that do not apply to it left out), with `update` (e.g. seq=4096) on top."""
    from vramplan.commands.plan_flags import method_plan

    def plan_for(method: str, **update: int):
        plan = method_plan(args, method)
        return plan.replace(**update)
    return plan_for


def sweep_series(model: str, plan_for: Callable, gpu: str | None, field: str,
                 values: Sequence[int] | None = None) -> dict:
    """Memory vs `field` ("seq" or "batch") per method: {"field", "values", "series": {method: [bytes or None]},
    "gpu", "gpu_usable_bytes"}. Bytes are `estimate(gpu=)`'s total on the GPU with the stored CUDA runs' reserve
    and context (`api.calibrated`, as `estimate --gpu` prints it), the peak without a GPU; a point
    the plan refuses (a PlanError, e.g. a batch the sharding cannot split) is None. The one sweep behind both
    `vramplan plot` and the page's charts."""
    from vramplan.api import calibrated, estimate
    from vramplan.errors import PlanError

    values = tuple(values or (SEQS if field == "seq" else BATCHES))
    series, usable = {}, None
    for method in METHODS:
        ys: list[int | None] = []
        for v in values:
            try:
                e = estimate(model, plan_for(method, **{field: v}), gpu=gpu)
            except PlanError:
                ys.append(None)
                continue
            if gpu:
                e, _ = calibrated(e)
            usable = e.gpu_usable_bytes
            ys.append(_total(e))
        series[method] = ys
    return {"field": field, "values": list(values), "series": series, "gpu": gpu, "gpu_usable_bytes": usable}


def _sweep(ax, model: str, plan_for: Callable, gpu: str | None, field: str, values: Sequence[int]) -> None:
    data = sweep_series(model, plan_for, gpu, field, values)
    usable = data["gpu_usable_bytes"]
    for method, ys in data["series"].items():
        ax.plot(values, [float("nan") if y is None else y / GiB for y in ys], marker="o", color=COLORS[method],
                label=method)
    if usable:
        ax.axhline(usable / GiB, color="black", linestyle="--", linewidth=1, label=f"{gpu} usable")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(values), [str(v) for v in values])
    ax.set_xlabel("sequence length" if field == "seq" else "micro-batch")
    ax.set_ylabel("GiB on the GPU" if gpu else "GiB at the peak")
    ax.set_title(f"{model}: memory vs {'sequence length' if field == 'seq' else 'micro-batch'}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _breakdown(ax, rows: list[MemoryEstimate]) -> None:
    parts = [e.components.items_bytes() for e in rows]
    names = sorted({k for p in parts for k, v in p.items() if v}, key=lambda k: -max(p.get(k, 0) for p in parts))
    bottoms = [0.0] * len(rows)
    cmap = _pyplot().get_cmap("tab20")
    for i, name in enumerate(names):
        heights = [p.get(name, 0) / GiB for p in parts]
        ax.bar(range(len(rows)), heights, bottom=bottoms, label=name.replace("_", " "), color=cmap(i % 20))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    extra = [((e.cuda_context_bytes or 0) + (e.allocator_reserve_bytes or 0)) / GiB for e in rows]
    if any(extra):
        ax.bar(range(len(rows)), extra, bottom=bottoms, label="reserve + CUDA context", color="#bbbbbb")
    ax.set_xticks(range(len(rows)), [e.plan.method for e in rows])
    ax.set_ylabel("GiB")
    ax.set_title("the peak by component")
    ax.legend(fontsize=7, ncol=2)


def _timeline(ax, rows: list[MemoryEstimate]) -> None:
    for e in rows:
        phases = list(e.phases)
        ax.plot(phases, [e.phases[p] / GiB for p in phases], marker="o", color=COLORS[e.plan.method],
                label=f"{e.plan.method} (peak in {e.peak_phase})")
    ax.set_ylabel("GiB allocated at the phase's peak")
    ax.set_title("one training step, phase by phase")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot(model: str, plan_for: Callable, gpu: str | None, kinds: Sequence[str], out: Path) -> Path:
    """Draw `kinds` (each of KINDS) into one figure at `out` (.png or .svg); returns the path."""
    from vramplan.api import estimate

    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--out {out}: give a .png, .svg or .pdf file")
    plt = _pyplot()
    cols = 2 if len(kinds) > 1 else 1
    rows_n = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.5 * cols, 4.2 * rows_n), squeeze=False)
    rows = [estimate(model, plan_for(m), gpu=gpu) for m in METHODS] if {"breakdown", "timeline"} & set(kinds) else []
    for ax, kind in zip(axes.flat, kinds):
        if kind in ("seq", "batch"):
            _sweep(ax, model, plan_for, gpu, kind, SEQS if kind == "seq" else BATCHES)
        elif kind == "breakdown":
            _breakdown(ax, rows)
        else:
            _timeline(ax, rows)
    for ax in list(axes.flat)[len(kinds):]:
        ax.set_visible(False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
