"""The GPU campaign: many small-to-medium plans on one CUDA GPU, measured and written one JSON line per plan.

    python benchmarks/gpu_campaign.py [--device cuda|cpu] [--limit N] [--only ID,...] [--budget-s 450] [--out PATH]

Models are built from their config.json with random weights (no downloads): a tiny Llama, Qwen2.5-0.5B,
Llama-3.2-1B, Qwen2.5-1.5B and Llama-3.2-3B; plans sweep full / LoRA / QLoRA, checkpointing on and off,
sequence length and micro-batch, sdpa and eager attention, a few optimizers; no sharding. Per plan:

* memory: `vramplan.measure.trainer.measure_step` (the micro-trainer the calibration uses; 2 steps, the last
  measured). On CUDA its `CudaMemory` is swapped for a subclass that also reads, per phase, the allocator's
  active-bytes peak (`torch.cuda.memory_stats()["active_bytes.all.peak"]`) and the device's used memory as
  nvidia-smi shows it (NVML through `pynvml` / `torch.cuda.device_memory_used`, else `nvidia-smi
  --query-gpu=memory.used`) at the phase's end: the caching allocator never returns memory inside a step, so the
  device's used memory only grows within it and the end of a phase is its peak. The CUDA context is measured
  once, before any other CUDA call (`cuda_memory.context_bytes`: device used after init minus before). On CPU
  the live-bytes tracker is the meter (the same phases, no allocator or device figures).
* speed: a second build of the same plan trains `--timed-steps` optimizer steps (after one warm-up step) without
  the tracker (its dispatch hook would slow every op), with the HF Trainer's gradient clipping, synchronized at
  the end: tokens/s = batch x seq x grad_accum x steps / seconds.
* the library versions and the GPU name (`calibration.library_versions`), and the NVIDIA driver where NVML says.

A plan that runs out of memory is a result (`status: oom`, with how far the allocator got); any other failure is
recorded with its message and the campaign goes on. Plans still waiting when `--budget-s` is spent are written
as `status: skipped`. The estimator is compared with the committed lines by tests/test_campaign_data.py.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY_LLAMA = {  # a 4-layer Llama small enough for a CPU test (GQA, SwiGLU, RoPE like its big siblings)
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}
QV, ALL = "q_proj,v_proj", "all-linear"
# torch.cuda.memory_stats() counters kept per phase for the caching-allocator model (vramplan/device.py)
_ALLOCATOR_COUNTERS = ("segment.all.current", "segment.large_pool.current", "segment.small_pool.current",
                       "num_alloc_retries", "num_ooms", "inactive_split_bytes.all.peak")
# (id, model: a preset name or "tiny", plan options for vramplan.plan.make_plan)
PLANS: list[tuple[str, str, dict]] = [
    ("tiny-full-fp32", "tiny", {"method": "full", "param_dtype": "fp32", "batch": 2, "seq": 64}),
    ("tiny-full", "tiny", {"method": "full", "batch": 2, "seq": 128}),
    ("tiny-lora", "tiny", {"method": "lora", "batch": 2, "seq": 128, "targets": QV}),
    ("tiny-qlora", "tiny", {"method": "qlora", "batch": 2, "seq": 128}),
    ("tiny-full-nockpt", "tiny", {"method": "full", "batch": 2, "seq": 128, "grad_ckpt": False}),
    ("tiny-lora-eager", "tiny", {"method": "lora", "batch": 2, "seq": 256, "attn": "eager"}),
    ("tiny-qlora-nockpt", "tiny", {"method": "qlora", "batch": 4, "seq": 256, "grad_ckpt": False}),
    ("q05-full-s512", "qwen2.5-0.5b", {"method": "full", "batch": 4, "seq": 512}),
    ("q05-full-s512-eager", "qwen2.5-0.5b", {"method": "full", "batch": 4, "seq": 512, "attn": "eager"}),
    ("q05-full-nockpt", "qwen2.5-0.5b", {"method": "full", "batch": 2, "seq": 512, "grad_ckpt": False}),
    ("q05-full-fused", "qwen2.5-0.5b", {"method": "full", "batch": 4, "seq": 512, "optimizer": "adamw_fused"}),
    ("q05-lora-s256", "qwen2.5-0.5b", {"method": "lora", "batch": 4, "seq": 256}),
    ("q05-lora-s1024", "qwen2.5-0.5b", {"method": "lora", "batch": 4, "seq": 1024}),
    ("q05-lora-s2048", "qwen2.5-0.5b", {"method": "lora", "batch": 4, "seq": 2048}),
    ("q05-lora-b1", "qwen2.5-0.5b", {"method": "lora", "batch": 1, "seq": 512}),
    ("q05-lora-b8", "qwen2.5-0.5b", {"method": "lora", "batch": 8, "seq": 512}),
    ("q05-lora-r64-all", "qwen2.5-0.5b", {"method": "lora", "batch": 4, "seq": 512, "rank": 64, "targets": ALL}),
    ("q05-lora-accum4", "qwen2.5-0.5b", {"method": "lora", "batch": 2, "seq": 512, "grad_accum": 4}),
    ("q05-qlora-s1024", "qwen2.5-0.5b", {"method": "qlora", "batch": 2, "seq": 1024}),
    ("q05-qlora-eager", "qwen2.5-0.5b", {"method": "qlora", "batch": 2, "seq": 512, "attn": "eager"}),
    ("q05-qlora-nockpt", "qwen2.5-0.5b", {"method": "qlora", "batch": 2, "seq": 512, "grad_ckpt": False}),
    ("l1b-full-s1024", "llama3.2-1b", {"method": "full", "batch": 2, "seq": 1024}),
    ("l1b-full-nockpt", "llama3.2-1b", {"method": "full", "batch": 1, "seq": 512, "grad_ckpt": False}),
    ("l1b-lora-s2048", "llama3.2-1b", {"method": "lora", "batch": 2, "seq": 2048}),
    ("l1b-lora-eager", "llama3.2-1b", {"method": "lora", "batch": 2, "seq": 1024, "attn": "eager"}),
    ("l1b-lora-nockpt", "llama3.2-1b", {"method": "lora", "batch": 4, "seq": 1024, "grad_ckpt": False}),
    ("l1b-qlora-s2048", "llama3.2-1b", {"method": "qlora", "batch": 4, "seq": 2048}),
    ("l1b-qlora-reentrant", "llama3.2-1b", {"method": "qlora", "batch": 2, "seq": 1024, "ckpt_reentrant": True}),
    ("q15-lora-all", "qwen2.5-1.5b", {"method": "lora", "batch": 4, "seq": 1024, "targets": ALL}),
    ("q15-qlora-s1024", "qwen2.5-1.5b", {"method": "qlora", "batch": 4, "seq": 1024}),
    ("q15-full-8bit", "qwen2.5-1.5b", {"method": "full", "batch": 2, "seq": 512, "optimizer": "adamw_8bit"}),
    ("l3b-lora-s1024", "llama3.2-3b", {"method": "lora", "batch": 4, "seq": 1024}),
    ("l3b-qlora-s2048", "llama3.2-3b", {"method": "qlora", "batch": 2, "seq": 2048}),
    ("l3b-full-s512", "llama3.2-3b", {"method": "full", "batch": 1, "seq": 512, "optimizer": "adamw_8bit"}),
]


def model_config(model: str) -> dict:
    """The config.json dict of a campaign model (the tiny Llama, or a vramplan preset)."""
    from vramplan.models import preset_config

    return dict(TINY_LLAMA) if model == "tiny" else preset_config(model)


def device_used_bytes(index: int = 0) -> int | None:
    """The device's used memory as nvidia-smi shows it: NVML (pynvml, or torch's wrapper of it), else nvidia-smi."""
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
    with contextlib.suppress(Exception):
        import torch

        return int(torch.cuda.device_memory_used(index))
    with contextlib.suppress(Exception):
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(float(out.strip().splitlines()[0]) * 2**20)  # MiB
    return None


def _device_memory_class():
    """CudaMemory that also keeps, per phase, the active-bytes peak and the device's used memory."""
    import torch

    from vramplan.measure.cuda_memory import CudaMemory

    class DeviceMemory(CudaMemory):
        last: DeviceMemory | None = None

        def __init__(self, device: str) -> None:
            super().__init__(device)
            self.active: dict[str, int] = {}
            self.device_used: dict[str, int | None] = {}
            self.allocator: dict[str, dict[str, int]] = {}  # segment and retry counters at each phase's end
            DeviceMemory.last = self

        def mark_load(self) -> None:
            super().mark_load()
            self.active["load"] = torch.cuda.memory_stats(self.index).get("active_bytes.all.current", 0)
            self.device_used["load"] = device_used_bytes(self.index)

        def new_step(self) -> None:
            super().new_step()
            for name in ("forward", "backward", "optimizer"):
                self.active.pop(name, None)
                self.device_used.pop(name, None)

        @contextlib.contextmanager
        def phase(self, name: str):
            with super().phase(name):
                yield
            stats = torch.cuda.memory_stats(self.index)
            self.active[name] = max(self.active.get(name, 0), stats.get("active_bytes.all.peak", 0))
            self.allocator[name] = {k: stats.get(k, 0) for k in _ALLOCATOR_COUNTERS}
            used = device_used_bytes(self.index)
            self.device_used[name] = max(self.device_used.get(name) or 0, used) if used is not None else None

    return DeviceMemory


def measure_memory(config: dict, plan, device: str) -> dict:
    """measure_step on `device` (see the module docstring); on CUDA with the per-phase active and device figures."""
    from vramplan.measure import trainer

    cuda = device.startswith("cuda")
    original, memory_class = trainer.CudaMemory, _device_memory_class() if cuda else None
    if memory_class:
        trainer.CudaMemory = memory_class
    try:
        step = trainer.measure_step(config, plan, device=device, steps=2)
    finally:
        trainer.CudaMemory = original
    out = {"live_phases": {"load": step.load_bytes, "forward": step.forward_peak_bytes,
                           "backward": step.backward_peak_bytes, "optimizer": step.optimizer_peak_bytes},
           "live_peak_bytes": step.peak_bytes, "peak_phase": step.peak_phase, "trainable_params": step.trainable_params}
    if memory_class:
        mem = memory_class.last
        out.update(allocated_phases=step.allocated_phases, reserved_phases=step.reserved_phases,
                   active_phases=getattr(mem, "active", None), device_used_phases=getattr(mem, "device_used", None),
                   allocator_counters=getattr(mem, "allocator", None),
                   cuda_context_bytes=step.cuda_context_bytes, paged_bytes=step.paged_bytes)
    return out


def measure_speed(config: dict, plan, device: str, steps: int) -> dict:
    """Seconds per optimizer step without the tracker, after one warm-up step (module docstring)."""
    import torch

    from vramplan.measure.build import build_model
    from vramplan.measure.optimizers import build_optimizer
    from vramplan.measure.trainer import _autocast, prepare_model

    torch.manual_seed(0)
    model = prepare_model(build_model(config, plan, device=device, trace=False), plan)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, plan)
    vocab = int(config["vocab_size"])

    def step() -> None:
        for _ in range(plan.grad_accum):
            ids = torch.randint(0, vocab, (plan.batch, plan.seq), device=device)
            with _autocast(plan, device):
                loss = model(input_ids=ids, labels=ids).loss
            (loss / plan.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # HF Trainer max_grad_norm=1.0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    return {"step_s": seconds, "tokens_per_s": plan.batch * plan.seq * plan.grad_accum / seconds}


def run_plan(plan_id: str, model: str, options: dict, device: str, timed_steps: int) -> dict:
    """One JSON line: the plan, its memory and speed, or why it has none."""
    from vramplan.errors import VramplanError
    from vramplan.measure.cuda_memory import StepOutOfMemory
    from vramplan.plan import make_plan

    plan = make_plan(**options)
    config = model_config(model)
    row = {"id": plan_id, "model": model, "config": config if model == "tiny" else None,
           "plan": plan.to_dict(), "device": device, "status": "ok"}
    start = time.perf_counter()
    try:
        row.update(measure_memory(config, plan, device))
        _release()
        row.update(measure_speed(config, plan, device, timed_steps))
    except StepOutOfMemory as exc:
        row.update(status="oom", oom={"phase": exc.phase, "allocated_bytes": exc.allocated_bytes,
                                      "reserved_bytes": exc.reserved_bytes, "message": exc.message})
    except (VramplanError, RuntimeError, ValueError) as exc:  # a plan that cannot run is a result too
        row.update(status="oom" if "out of memory" in str(exc).lower() else "error", error=str(exc)[:500])
    row["wall_s"] = round(time.perf_counter() - start, 2)
    _release()
    return row


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def header(device: str) -> dict:
    """Versions, the GPU and driver, and the CUDA context, measured before any other CUDA call."""
    from vramplan.measure.run import library_versions

    info: dict = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    if device.startswith("cuda"):
        from vramplan.measure.cuda_memory import context_bytes

        index = int(device.split(":")[1]) if ":" in device else 0
        info["device_used_before_init_bytes"] = device_used_bytes(index)
        info["cuda_context_bytes"] = context_bytes(index)
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
    info["versions"] = library_versions(device if device.startswith("cuda") else None)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--limit", type=int, default=None, help="run the first N plans")
    parser.add_argument("--only", default=None, help="comma-separated plan ids")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no plan after this many seconds")
    parser.add_argument("--timed-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    plans = [p for p in PLANS if args.only is None or p[0] in args.only.split(",")][: args.limit]
    info = header(args.device)
    gpu = info["versions"].get("gpu", "cpu").lower().replace("nvidia ", "").replace(" ", "-")
    out = args.out or ROOT / "benchmarks" / "data" / f"campaign-{gpu}.jsonl"
    start = time.perf_counter()
    with open(out, "w") as f:
        for plan_id, model, options in plans:
            if time.perf_counter() - start > args.budget_s:
                row = {"id": plan_id, "model": model, "status": "skipped", "reason": "--budget-s spent"}
            else:
                row = run_plan(plan_id, model, options, args.device, args.timed_steps)
            f.write(json.dumps({**info, **row}) + "\n")
            f.flush()
            print(f"{row['id']:22} {row['status']:7} {row.get('tokens_per_s', 0):10,.0f} tok/s "
                  f"{row.get('wall_s', 0):6.1f} s", flush=True)
    print(f"{len(plans)} plans in {time.perf_counter() - start:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
