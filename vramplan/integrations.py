"""`VramplanCallback`: a `transformers.TrainerCallback` that checks a run before it starts and records it after.

    trainer.add_callback(VramplanCallback(gpu="rtx4090", fail_if_not_fits=True))   # Trainer, and TRL's trainers

- Before training: the plan comes from the live trainer (the model's config, its peft `LoraConfig` and
  bitsandbytes `quantization_config`, the weights' dtype and attention, `TrainingArguments` read by
  `vramplan.configs.hf.read_training_args`, the world size), the estimate and the verdict for the GPU are
  printed, and with `fail_if_not_fits` a plan that does not fit stops with `DoesNotFitError` before anything is
  allocated for a step. The sequence length is the first batch's (the estimate is made at the first forward,
  before it allocates) unless `seq` or the trainer's `max_length` gives it.
- During the first `steps` optimizer steps: the real per-phase peaks of the last one (forward ends at the model's
  forward hook, backward at `on_pre_optimizer_step`, the optimizer at `on_optimizer_step`). On CUDA the
  allocator's statistics (`max_memory_allocated`/`max_memory_reserved`, the device memory in use beyond the
  reserve as the CUDA context, paged optimizer states); elsewhere `vramplan.measure.tracker.MemoryTracker`.
  The record goes to the calibration store (`vramplan.measure.store`) with the plan, the GPU and library versions,
  where `estimate --gpu`/`check` learn the reserve and context from it.
- At the end of training: measured vs estimated, per phase.

A run vramplan cannot model is said in one line and trains on unrecorded. Off CUDA the tracker is a torch
dispatch mode active from the start of training to the end of the last recorded step; if training raises
before then, `callback.stop()` leaves it (a notebook keeps its process).

transformers and torch are imported when a callback is created, not with vramplan.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramplan.errors import DoesNotFitError, InputError, VramplanError
from vramplan.measure.records import STEP_PHASES

if TYPE_CHECKING:
    from vramplan.estimator.result import MemoryEstimate

PHASES = STEP_PHASES  # the step's phases: one owner (estimator/result.py PHASES, less load)


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def plan_options_from_trainer(args: Any, model: Any, seq: int | None) -> tuple[dict, dict, str]:
    """(plan options, the base model's config dict, its name) of a live trainer's model and arguments."""
    import torch

    from vramplan.configs.fields import FieldReader
    from vramplan.configs.hf import read_training_args

    reader = FieldReader({k: v for k, v in args.to_dict().items() if k != "gradient_checkpointing_kwargs" or v},
                         "TrainingArguments")
    autocast = read_training_args(reader, Path("."))
    options = dict(reader.options)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    frozen = [p for p in base.parameters() if not p.requires_grad and p.is_floating_point()]
    dtype = names.get((frozen or list(base.parameters()))[0].dtype, "fp32")
    options.update(_adapter_options(model, base))
    if options["method"] == "qlora":  # weights load in the config's dtype; peft's kbit preparation may upcast
        loaded = getattr(base.config, "dtype", None) or getattr(base.config, "torch_dtype", None)
        if isinstance(loaded, str):
            loaded = getattr(torch, loaded.removeprefix("torch."), None)
        loaded = names.get(loaded, dtype)
        options["kbit_upcast"] = loaded != "fp32" and dtype == "fp32"
        dtype = loaded
    options["param_dtype"] = dtype
    if autocast and dtype == "fp32":
        options["mixed_precision"] = autocast
    options["attn"] = getattr(base.config, "_attn_implementation", None) or "sdpa"
    options["grad_ckpt"] = bool(getattr(base, "is_gradient_checkpointing", False) or options.get("grad_ckpt"))
    if type(args).__name__ == "SFTConfig":  # TRL's SFTTrainer (vramplan.estimator.trainers: trl-sft)
        options["trainer"] = "trl-sft"
        options["loss_type"] = {"chunked_nll": "nll"}.get(args.loss_type, args.loss_type)
    else:
        options["trainer"] = "hf"
    options["gpus"] = max(1, int(getattr(args, "world_size", 1)))
    if options["gpus"] > 1 and "sharding" not in options:
        options["sharding"] = "ddp"
    max_length = getattr(args, "max_length", None)
    options["seq"] = seq or (max_length if isinstance(max_length, int) else None)
    return options, config, str(getattr(base.config, "_name_or_path", "") or config.get("model_type", "model"))


def _adapter_options(model: Any, base: Any) -> dict:
    """peft's LoraConfig and bitsandbytes' quantization_config of the live model."""
    quant = getattr(base.config, "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    peft = getattr(model, "peft_config", None)
    if not peft:
        return {"method": "full"}
    lora = peft.get("default", next(iter(peft.values())))
    targets = lora.target_modules
    out: dict[str, Any] = {"method": "lora", "rank": lora.r, "alpha": float(lora.lora_alpha),
                           "lora_dropout": float(lora.lora_dropout),
                           "targets": targets if isinstance(targets, str) else ",".join(sorted(targets))}
    if quant and quant.get("load_in_4bit"):
        from vramplan.hf_names import dtype_from_hf, storage_dtype_from_hf

        out.update(method="qlora", quant=quant.get("bnb_4bit_quant_type", "fp4"),
                   double_quant=bool(quant.get("bnb_4bit_use_double_quant")),
                   compute_dtype=dtype_from_hf(str(quant.get("bnb_4bit_compute_dtype") or "float32")),
                   quant_storage=storage_dtype_from_hf(str(quant.get("bnb_4bit_quant_storage") or "uint8")))
    return out


class _Meter:
    """Per-phase peaks: the CUDA allocator's on CUDA, a MemoryTracker's elsewhere."""

    def __init__(self, device: Any, model: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.index = (device.index or 0) if self.cuda else None
        self.tracker = None
        if not self.cuda:
            from vramplan.measure.tracker import MemoryTracker

            self.tracker = MemoryTracker(record=True)
            self.tracker.__enter__()
            self.tracker.register(list(model.parameters()) + list(model.buffers()))
            self.tracker.name_modules(model)
        self.peaks = dict.fromkeys(PHASES, 0)
        self.reserved = dict.fromkeys(PHASES, 0)
        self.snapshot: list = []
        self.load_bytes = self.current()

    def current(self) -> int:
        return self.torch.cuda.memory_allocated(self.index) if self.cuda else self.tracker.current_bytes

    def start(self, phase: str) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.index)
        else:
            self.tracker.phase_name = phase
            self.tracker.reset_peak()

    def close(self, phase: str) -> None:
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated(self.index)
            self.reserved[phase] = max(self.reserved[phase], self.torch.cuda.max_memory_reserved(self.index))
        else:
            peak = self.tracker.peak_bytes
            if peak > max(self.peaks.values()):
                self.snapshot = self.tracker.peak_snapshot()
        self.peaks[phase] = max(self.peaks[phase], peak)

    def stop(self) -> None:
        if self.tracker is not None:
            self.tracker.__exit__(None, None, None)
            self.tracker = None


class _Callback:
    """The callback's behaviour; `VramplanCallback` is this with `transformers.TrainerCallback` as its base."""

    def __init__(self, gpu: str | None = None, *, fail_if_not_fits: bool = False, steps: int = 2,
                 seq: int | None = None, store: str | Path | None = None, save: bool = True,
                 printer: Any = print) -> None:
        if steps < 1:
            raise InputError("steps: record at least 1 step")
        self.gpu, self.fail_if_not_fits, self.steps, self.seq = gpu, fail_if_not_fits, steps, seq
        self.store, self.save, self.print = store, save, printer
        self.estimate: Any = None
        self.record: Any = None
        self.meter: _Meter | None = None
        self.phase: str | None = None
        self._hooks: list = []

    # Before training ---------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.args, self.model, self.optimizer = args, model, kwargs.get("optimizer")
        try:
            self.options, self.config, self.name = plan_options_from_trainer(args, model, self.seq)
        except VramplanError as exc:
            self.print(f"vramplan: cannot estimate this run: {exc}")
            return
        self.gpu = self.gpu or _gpu_name(args.device)
        if self.options["seq"] and not self._try_estimate():
            return
        self.meter = _Meter(args.device, model)
        self._hooks = [model.register_forward_pre_hook(self._forward_begins, with_kwargs=True),
                       model.register_forward_hook(self._forward_ends)]

    def _try_estimate(self) -> bool:
        """Estimate; a plan vramplan cannot model is said and the run goes on unrecorded (False). A plan that does
        not fit, with fail_if_not_fits, raises DoesNotFitError."""
        try:
            self._estimate()
        except DoesNotFitError:
            raise
        except VramplanError as exc:
            self.print(f"vramplan: cannot estimate this run: {exc}")
            self.stop()
            return False
        return True

    def _estimate(self) -> None:
        from vramplan import api
        from vramplan.models import spec_from_config
        from vramplan.plan import make_plan

        self.plan = make_plan(**self.options)
        self.spec = spec_from_config(self.config, self.name, "trainer")
        self.estimate = api.estimate(self.spec, self.plan, gpu=self.gpu)
        words = None
        if self.gpu:
            self.estimate, words = api.calibrated(self.estimate, self.store)
        self.print(_summary(self.estimate) + (f"\n{words}" if words else ""))
        if self.fail_if_not_fits and self.estimate.fits is False:
            self.stop()
            raise DoesNotFitError(f"vramplan: this run does not fit {self.estimate.gpu}: "
                                  f"{_gib(self.estimate.total_gpu_bytes)} of {_gib(self.estimate.gpu_usable_bytes)}")

    def _forward_begins(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.estimate is None and self.meter is not None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                self.print("vramplan: no input_ids in the first batch: give VramplanCallback(seq=...)")
                self.stop()
                return
            self.options["seq"] = int(ids.shape[-1])  # the first batch's length
            if not self._try_estimate():
                return
        if self.phase == "backward":  # the next micro-batch of an accumulation step
            self.meter.close("backward")
        if self.phase is not None:
            self.meter.start("forward")
            self.phase = "forward"

    def _forward_ends(self, module: Any, args: tuple, output: Any) -> None:
        if self.phase == "forward":
            self.meter.close("forward")
            self.meter.start("backward")
            self.phase = "backward"

    # The recorded steps --------------------------------------------------------------------------------------
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.meter is None:
            return
        if state.global_step == self.steps - 1:  # the last recorded step: its peaks are the measurement
            optimizer = kwargs.get("optimizer") or self.optimizer
            if self.meter.tracker is not None and optimizer is not None:  # name weights and states in snapshots
                from vramplan.measure.trainer import named_state

                self.meter.tracker.name_tensors(named_state(self.model, optimizer))
            self.meter.peaks = dict.fromkeys(PHASES, 0)
            self.meter.reserved = dict.fromkeys(PHASES, 0)
            self.phase = "step"

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.phase == "backward":
            self.meter.close("backward")
            self.meter.start("optimizer")
            self.phase = "optimizer"

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.phase == "optimizer":
            self.meter.close("optimizer")
            self.phase = "done"

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.phase == "done" and self.estimate is not None:
            self.record = self._record()
            self.stop()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stop()
        if self.record is not None and self.record.measured is not None:
            rows = [f"  {k:<12} measured {_gib(c.measured_bytes)}  estimated {_gib(c.estimate_bytes)}  "
                    f"({c.error_pct:+.1f}%)" for k, c in self.record.by_phase.items() if c.error_pct is not None]
            self.print("vramplan: measured vs estimated (step " + str(self.steps) + ")\n" + "\n".join(rows))

    def stop(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self.phase = [], None
        if self.meter is not None:
            self.meter.stop()

    def _record(self) -> Any:
        """The calibration record of the measured step (stored unless save=False)."""
        from vramplan.measure import comparison, records
        from vramplan.measure.run import library_versions
        from vramplan.measure.store import CalibrationStore

        meter, cuda = self.meter, self.meter.cuda
        phases = {"load": meter.load_bytes, **meter.peaks}
        components = comparison.measured_components(meter.snapshot, max(PHASES, key=lambda p: meter.peaks[p]))
        measured = records.Measured(
            source="cuda_allocator" if cuda else "tracker", phases=phases,
            peak_phase=max(PHASES, key=lambda p: phases[p]), tracked_phases=phases, after_step_bytes=meter.current(),
            trainable_params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            components=components, top_allocations=[],
            reserved_bytes=max(meter.reserved.values()) if cuda else None,
            reserved_phases={"load": 0, **meter.reserved} if cuda else None,
            cuda_context_bytes=_context_bytes(meter) if cuda else None)
        estimate = self.estimate.to_dict()
        by_phase, by_component = comparison.compare(estimate, measured)
        device = str(self.args.device)
        record = records.CalibrationRecord(
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=self.spec.name,
            plan=self.plan.to_dict(), device=device, traced=False, steps=self.steps, status="ok",
            versions=library_versions(device if cuda else None), estimate=estimate,
            estimate_basis=comparison.estimate_basis(estimate, measured), measured=measured, by_phase=by_phase,
            by_component=by_component)
        return CalibrationStore(self.store).add(record) if self.save else record


def _gpu_name(device: Any) -> str | None:
    """The GPU profile of a CUDA device (by its name), or None off CUDA or for a GPU without a profile."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    from vramplan.errors import UnknownGpuError
    from vramplan.hardware import resolve_gpu

    try:
        return resolve_gpu(torch.cuda.get_device_name(device)).slug
    except UnknownGpuError:
        return None


def _context_bytes(meter: _Meter) -> int:
    """Device memory in use beyond the allocator's reserve (`mem_get_info`): the CUDA context, cuBLAS/NCCL
    handles and anything else on the device outside torch's allocator (other processes included)."""
    free, total = meter.torch.cuda.mem_get_info(meter.index)
    return max(0, total - free - meter.torch.cuda.memory_reserved(meter.index))


def _gib(n: int | None) -> str:
    from vramplan.units import format_bytes

    return format_bytes(n, "auto")


def _summary(e: MemoryEstimate) -> str:
    plan = e.plan
    head = (f"vramplan: {e.model} {plan.method}, batch {plan.batch} x seq {plan.seq}: peak "
            f"{_gib(e.peak_bytes)} ({e.peak_phase})")
    if e.gpu is None:
        return head
    verdict = "fits" if e.fits else "DOES NOT FIT"
    return (f"{head}; on {e.gpu}: {_gib(e.total_gpu_bytes)} of {_gib(e.gpu_usable_bytes)} usable: {verdict} "
            f"(headroom {_gib(e.headroom_bytes)})")


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    """`VramplanCallback` is built on first use: transformers is imported then, not with this module."""
    global _CLASS
    if name != "VramplanCallback":
        raise AttributeError(f"module 'vramplan.integrations' has no attribute {name!r}")
    if _CLASS is None:
        _CLASS = type("VramplanCallback", (_Callback, _callback_base()), {
            "__doc__": "Check a Trainer run before it starts and record its real memory (see vramplan.integrations).",
            "__module__": __name__})
    return _CLASS
