"""The micro-trainer: one real fine-tuning step of a plan, measured phase by phase with `MemoryTracker`.

It does what a transformers + peft + bitsandbytes script does, through the libraries' own code:

    model = from_config / from_pretrained(quantization_config=...)       (build.py)
    a k-bit base (QLoRA, 8-bit) + kbit_upcast:
        peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=...)
    otherwise, with checkpointing: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)
    lora/qlora: model = peft.get_peft_model(model, LoraConfig(...))
    optimizer = <plan.optimizer> over the trainable parameters             (optimizers.py)
    for each step, for each of grad_accum micro-batches:
        out = model(input_ids=ids, labels=ids.clone())   # under torch.autocast for full + mixed precision
        loss = out.loss; del out                          # Trainer.compute_loss keeps only the loss
        (loss / grad_accum).backward()                    # Trainer.training_step
    optimizer.step(); optimizer.zero_grad(set_to_none=True); del batch

Phases (each peak is the highest *total* live bytes inside it): "forward" = the model call with its loss,
"backward" = `loss.backward()`, "optimizer" = `step()` + `zero_grad()`. Step 1 creates the optimizer states;
the numbers are those of the last step (steady state). With `trace=True` the same code runs under
`FakeTensorMode` (tracing.py): full-size models in seconds, no real memory. On a real CUDA device the
allocator's own per-phase peaks, the CUDA context and paged optimizer states are read too (cuda_memory.py), and
running out of memory raises `StepOutOfMemory` (a result to record, not a failure).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Callable

import torch

from vramplan.errors import MeasurementError
from vramplan.measure.build import (
    build_model,
    hf_config,
    resolve_targets,
    torch_dtype,
    traced_peft_init,
)
from vramplan.measure.cuda_memory import CudaMemory, paged_bytes
from vramplan.measure.optimizers import build_optimizer
from vramplan.measure.tracing import fake_session, warm_caches
from vramplan.measure.tracker import Allocation, MemoryTracker
from vramplan.plan import TrainingPlan
from vramplan.record import Record

PHASES = ("forward", "backward", "optimizer")
# Collect the young generations (what a run creates); a full collection of the heap that transformers builds
# costs ~0.5 s per call on CPU and never changed a count in the tests.
GC_GENERATION = 1


class MeasuredStep(Record):
    """Live storage bytes of one steady-state training step (exact counts, no allocator rounding). Its `to_dict`
    is JSON (the snapshots' allocations as tables) that `from_dict` reads back: gloo ranks hand steps over so."""

    computed = ("peak_bytes", "reserved_bytes")

    load_bytes: int  # model + adapters + optimizer object, before step 1
    forward_peak_bytes: int
    backward_peak_bytes: int
    optimizer_peak_bytes: int
    after_step_bytes: int  # live after the last step (optimizer states included, gradients freed)
    trainable_params: int
    traced: bool
    peak_phase: str
    snapshots: dict[str, list[Allocation]]  # per phase: what was live at its peak, largest first
    # Real CUDA runs only, None otherwise (cuda_memory.py). Per phase: torch.cuda.max_memory_allocated() /
    # max_memory_reserved() of the last step; "load" is memory_allocated() / memory_reserved() after the load.
    allocated_phases: dict[str, int] | None = None
    reserved_phases: dict[str, int] | None = None
    cuda_context_bytes: int | None = None
    paged_bytes: int | None = None  # paged optimizer states in CUDA managed memory (not in the allocator)

    @property
    def peak_bytes(self) -> int:
        return max(self.forward_peak_bytes, self.backward_peak_bytes, self.optimizer_peak_bytes)

    @property
    def reserved_bytes(self) -> int | None:
        """The caching allocator's reserved peak over the step (CUDA only)."""
        return max(self.reserved_phases.values()) if self.reserved_phases else None

    @property
    def peak_snapshot(self) -> list[Allocation]:
        """What was live at the step's peak (the snapshot of `peak_phase`)."""
        return self.snapshots[self.peak_phase]


def measure_step(config: dict, plan: TrainingPlan, *, device: str = "cpu", trace: bool = False, steps: int = 2,
                 seed: int = 0, on_progress: Callable[[int, int, str], None] | None = None) -> MeasuredStep:
    """Build the plan's model from `config` (a config.json dict), train `steps` steps, measure the last one.

    Raises MeasurementError for what cannot be measured (flash_attention_2, no CUDA, unknown model type or
    LoRA targets, missing packages), and its subclass StepOutOfMemory when a real CUDA step runs out of memory.
    The caller's RNG state is left as it was (`seed` seeds a forked one). `on_progress(done, total, label)` is
    called before the load and before each step.
    """
    _check(plan, device, trace, steps)
    hf_config(config)
    progress = on_progress or (lambda done, total, label: None)
    cuda = CudaMemory(device) if device.startswith("cuda") and not trace else None  # before any CUDA call
    with torch.random.fork_rng(devices=[cuda.index] if cuda else []), warnings.catch_warnings(), \
            _session(trace, config.get("model_type")):
        torch.manual_seed(seed)
        warnings.simplefilter("ignore")  # deprecation and CPU-fallback chatter; behaviours are in the docstrings
        with MemoryTracker(record=True) as tracker, _out_of_memory_as_result(cuda, tracker):
            progress(0, steps + 1, "load")
            model = prepare_model(build_model(config, plan, device=device, trace=trace), plan)
            optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], plan)
            tracker.name_modules(model)
            tracker.name_tensors(named_state(model, optimizer))
            gc.collect(GC_GENERATION)
            load = tracker.current_bytes
            if cuda:
                cuda.mark_load()
            for i in range(steps):
                progress(i + 1, steps + 1, f"step {i + 1}/{steps}")
                if cuda:
                    cuda.new_step()
                peaks, snaps = _train_step(model, optimizer, plan, tracker, config, device, cuda)
                tracker.name_tensors(named_state(model, optimizer))
            gc.collect(GC_GENERATION)
            after = tracker.current_bytes
    top = max(PHASES, key=lambda p: peaks[p])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return MeasuredStep(
        load_bytes=load, forward_peak_bytes=peaks["forward"], backward_peak_bytes=peaks["backward"],
        optimizer_peak_bytes=peaks["optimizer"], after_step_bytes=after, trainable_params=trainable,
        traced=trace, peak_phase=top, snapshots=snaps,
        **(_cuda_fields(cuda, optimizer) if cuda else {}),
    )


def _cuda_fields(cuda: CudaMemory, optimizer: torch.optim.Optimizer) -> dict:
    return dict(allocated_phases=dict(cuda.allocated), reserved_phases=dict(cuda.reserved),
                cuda_context_bytes=cuda.context_bytes, paged_bytes=paged_bytes(optimizer))


def _out_of_memory_as_result(cuda: CudaMemory | None, tracker: MemoryTracker) -> contextlib.AbstractContextManager:
    if cuda is None:
        return contextlib.nullcontext()
    return cuda.out_of_memory_as_result(lambda: "load" if tracker.phase_name == "setup" else tracker.phase_name)


def _check(plan: TrainingPlan, device: str, trace: bool, steps: int) -> None:
    if steps < 1:
        raise MeasurementError("steps: must be at least 1")
    if plan.attn == "flash_attention_2":
        raise MeasurementError("attn: flash_attention_2 needs CUDA and the flash-attn package; measure eager or sdpa")
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise MeasurementError(f"device: '{device}' is not supported; use cpu or cuda")
    if kind == "cuda" and trace and torch.version.cuda is None:
        raise MeasurementError("device: tracing on cuda needs a CUDA build of torch (a GPU is not needed); use cpu")
    if kind == "cuda" and not trace and not torch.cuda.is_available():
        raise MeasurementError("device: cuda requested but torch.cuda.is_available() is False; use cpu or trace")


def _session(trace: bool, model_type: str | None) -> contextlib.AbstractContextManager:
    if trace:
        return fake_session(model_type)
    warm_caches(model_type)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, plan: TrainingPlan) -> torch.nn.Module:
    """Checkpointing, kbit preparation and LoRA adapters, in the order scripts apply them."""
    ckpt_kwargs = {"use_reentrant": plan.ckpt_reentrant}
    if plan.kbit and plan.kbit_upcast:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.grad_ckpt,
                                                gradient_checkpointing_kwargs=ckpt_kwargs)
    elif plan.grad_ckpt:
        # transformers' activation_checkpointing_enable also calls enable_input_require_grads() for input_ids
        # models, which the reentrant variant needs when the embeddings are frozen.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    if plan.uses_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=plan.rank, lora_alpha=plan.alpha, lora_dropout=plan.lora_dropout,
                          use_dora=plan.use_dora, trainable_token_indices=_token_rows(plan),
                          modules_to_save=_saved_modules(model, plan),
                          target_modules=resolve_targets(model, plan.targets), task_type="CAUSAL_LM")
        try:
            with traced_peft_init():
                model = get_peft_model(model, lora)
        except ValueError as exc:  # e.g. target modules not found in the base model
            raise MeasurementError(f"targets: {exc}") from None
    return model


def _saved_modules(model: torch.nn.Module, plan: TrainingPlan) -> list[str] | None:
    """`modules_to_save`: the model's own names of its input embedding and output head (`embed_tokens` and
    `lm_head` in the plan; GPT-NeoX's `embed_in`/`embed_out`)."""
    if not plan.modules_to_save:
        return None
    names = plan.modules_to_save.split(",")
    out = []
    if "embed_tokens" in names:
        emb = model.get_input_embeddings()
        out += [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is emb]
    if "lm_head" in names:
        head = model.get_output_embeddings()
        out += [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head]
    return out


def _token_rows(plan: TrainingPlan) -> list[int] | None:
    """`trainable_token_indices`: `trainable_tokens` rows (which ones does not change the memory)."""
    return None if not plan.trainable_tokens else list(range(plan.trainable_tokens))


def _train_step(model, optimizer, plan: TrainingPlan, tracker: MemoryTracker, config: dict, device: str,
                cuda: CudaMemory | None = None):
    """One optimizer step of `grad_accum` micro-batches; returns each phase's peak and its snapshot."""
    peaks = dict.fromkeys(PHASES, 0)
    snaps: dict[str, list[Allocation]] = {}
    vocab = int(config.get("vocab_size") or model.config.vocab_size)
    batches = []
    for _ in range(plan.grad_accum):
        ids = torch.randint(0, vocab, (plan.batch, plan.seq), dtype=torch.int64, device=device)
        batch = {"input_ids": ids, "labels": ids.clone()}
        batches.append(batch)  # a data loader's batch lives until the next one replaces it
        with tracker.phase("forward"), _cuda_phase(cuda, "forward"):
            with _autocast(plan, device):
                out = model(**batch)
            loss = out.loss
            del out
        _keep_peak(tracker, "forward", peaks, snaps)
        with tracker.phase("backward"), _cuda_phase(cuda, "backward"):
            (loss / plan.grad_accum if plan.grad_accum > 1 else loss).backward()
            del loss
        _keep_peak(tracker, "backward", peaks, snaps)
    with tracker.phase("optimizer"), _cuda_phase(cuda, "optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _keep_peak(tracker, "optimizer", peaks, snaps)
    del batches
    return peaks, snaps


def named_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """(name, tensor) for parameters, buffers, 4-bit quant states and optimizer states, to label snapshots."""
    names = {}
    for name, param in model.named_parameters():
        names[id(param)] = name
        yield name, param
        state = getattr(param, "quant_state", None)
        if state is not None:
            nested = {"offset": state.offset, **({"state2.absmax": state.state2.absmax,
                                                  "state2.code": state.state2.code} if state.nested else {})}
            for key, value in {"absmax": state.absmax, "code": state.code, **nested}.items():
                if isinstance(value, torch.Tensor):
                    yield f"{name}.quant_state.{key}", value
    yield from model.named_buffers()
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                yield f"optimizer[{names.get(id(param), '?')}].{key}", value
    for key, value in getattr(optimizer, "name2qmap", {}).items():  # bitsandbytes' shared quantization maps
        if isinstance(value, torch.Tensor):
            yield f"optimizer.qmap.{key}", value


def _cuda_phase(cuda: CudaMemory | None, name: str) -> contextlib.AbstractContextManager:
    return cuda.phase(name) if cuda else contextlib.nullcontext()


def _keep_peak(tracker: MemoryTracker, phase: str, peaks: dict, snaps: dict) -> None:
    if tracker.peak_bytes > peaks[phase]:
        peaks[phase] = tracker.peak_bytes
        snaps[phase] = tracker.peak_snapshot()


def _autocast(plan: TrainingPlan, device: str) -> contextlib.AbstractContextManager:
    """Mixed precision (fp32 weights, full or LoRA): forward and loss under torch.autocast, as HF Trainer's
    `bf16=True` / `fp16=True` does around `compute_loss`."""
    if plan.mixed_precision:
        return torch.autocast(torch.device(device).type, dtype=torch_dtype(plan.mixed_precision))
    return contextlib.nullcontext()
