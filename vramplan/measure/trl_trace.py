"""Trace the step of the other training loops: a custom loop that keeps `outputs`, and TRL's `SFTTrainer`.

`measure_trainer_step(config, plan, trace=True)` does what `measure_step` does (trainer.py) for `plan.trainer`:

- `hf`: `measure_step` itself (HF Trainer: the outputs are dropped before `backward()`).
- `loop`: a hand-written or accelerate loop, `outputs = model(**batch); outputs.loss.backward()`: the outputs,
  logits included, stay referenced through backward (accelerate's nlp_example, most tutorials).
- `trl-sft`: TRL's own `SFTTrainer.compute_loss` runs the step, on the model prepared as `SFTTrainer.__init__`
  prepares it (TRL 1.16, trl/trainer/sft_trainer.py): `get_peft_model`, then `enable_input_require_grads()` for a
  PEFT model with checkpointing, every trainable parameter cast to bf16 for a quantized model (no
  `prepare_model_for_kbit_training`), `add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))`;
  `Trainer.train` then turns checkpointing on (non-reentrant unless asked). The batch is what TRL's
  `DataCollatorForLanguageModeling` returns for unpadded rows: input_ids, attention_mask, labels.

Not driven: `SFTTrainer` itself (its `__init__` tokenizes a dataset and needs a processing class from the Hub), so
`compute_loss` is called unbound on a stand-in that carries the attributes it reads (args, accelerator, metrics).
The stand-in's `gather_for_metrics` returns a constant scalar: the metric `.item()` calls read data, which a
FakeTensor has not; the scalars it would have made are a few bytes. The all-ones attention mask stays in the batch
(its bytes are counted) but is not passed to the model: a real unpadded batch lets transformers drop it
(`_ignore_causal_mask_sdpa`), while under FakeTensors it would build an explicit [batch, 1, seq, seq] mask.

`packing` (trl-sft): the padding-free collator's one row of batch x seq tokens, `position_ids` restarting at each
packed row, labels, no attention_mask. The tracer's patch of `find_packed_sequence_indices` (tracing.py: it
returns None, as a real run of unpacked rows does) is lifted for this step (`packed_rows`): a real run of packed
rows reads several sequences in the position ids and gets the index tensor, so transformers builds the
block-diagonal mask.
"""

from __future__ import annotations

import contextlib
import gc
import types
import warnings
from collections.abc import Iterator

import torch

from vramplan.errors import MeasurementError
from vramplan.measure.build import build_model, hf_config, resolve_targets
from vramplan.measure.optimizers import build_optimizer
from vramplan.measure.tracker import Allocation, MemoryTracker
from vramplan.measure.trainer import (
    GC_GENERATION,
    PHASES,
    MeasuredStep,
    _autocast,
    _keep_peak,
    _session,
    measure_step,
    named_state,
    prepare_model,
)
from vramplan.plan import TrainingPlan


def measure_trainer_step(config: dict, plan: TrainingPlan, *, trace: bool = True, steps: int = 2,
                         seed: int = 0) -> MeasuredStep:
    """One steady-state step of `plan.trainer` on CPU (traced or real), measured as `measure_step` measures."""
    if plan.trainer == "hf":
        return measure_step(config, plan, trace=trace, steps=steps, seed=seed)
    if plan.attn == "flash_attention_2":
        raise MeasurementError("attn: flash_attention_2 needs CUDA and the flash-attn package; measure eager or sdpa")
    hf_config(config)
    tiles = triton_tiles() if plan.trainer in ("trl-sft", "trl-dpo") else contextlib.nullcontext()
    packed = packed_rows() if plan.packing else contextlib.nullcontext()  # before the session patches it
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), _session(trace, config.get("model_type")), \
            tiles, packed:
        torch.manual_seed(seed)
        warnings.simplefilter("ignore")
        with MemoryTracker(record=True) as tracker:
            model = build_model(config, plan, device="cpu", trace=trace)
            model = prepare_model(model, plan) if plan.trainer == "loop" else prepare_sft_model(model, plan)
            ref = _reference_model(config, plan)
            optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], plan)
            tracker.name_modules(model)
            tracker.name_tensors(named_state(model, optimizer))
            gc.collect(GC_GENERATION)
            load = tracker.current_bytes
            loss_fn = {"loop": _loop_loss, "trl-sft": _sft_loss(plan), "trl-dpo": _dpo_loss(plan, ref)}[plan.trainer]
            held: dict = {}  # what the loop keeps between steps (a custom loop's `outputs`)
            for _ in range(steps):
                peaks, snaps = _step(model, optimizer, plan, tracker, config, loss_fn, held)
                tracker.name_tensors(named_state(model, optimizer))
            gc.collect(GC_GENERATION)
            after = tracker.current_bytes
    top = max(PHASES, key=lambda p: peaks[p])
    return MeasuredStep(
        load_bytes=load, forward_peak_bytes=peaks["forward"], backward_peak_bytes=peaks["backward"],
        optimizer_peak_bytes=peaks["optimizer"], after_step_bytes=after,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        traced=trace, peak_phase=top, snapshots=snaps,
    )


def prepare_sft_model(model: torch.nn.Module, plan: TrainingPlan) -> torch.nn.Module:
    """What `SFTTrainer.__init__` and `Trainer.train` do to a model they are handed (TRL 1.16)."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    quantized = getattr(model, "is_loaded_in_4bit", False) or plan.method == "qlora"
    if plan.uses_lora:
        lora = LoraConfig(r=plan.rank, lora_alpha=plan.alpha, lora_dropout=plan.lora_dropout,
                          target_modules=resolve_targets(model, plan.targets), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        if plan.grad_ckpt:
            model.enable_input_require_grads()
    if quantized:  # "the PEFT adapter weights are converted to bf16" (sft_trainer.py)
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_magnitude_vector" not in name:
                param.data = param.data.to(torch.bfloat16)
    # DPOTrainer asks for mean_logits too (same buffers: the kernel allocates all 7 statistics)
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1") if plan.trainer == "trl-dpo" else \
        ("log_probs", "entropy", "is_top1")
    add_fused_lm_head(model.get_base_model() if plan.uses_lora else model, outputs=outputs)
    if plan.grad_ckpt:  # Trainer.train -> model.gradient_checkpointing_enable(gradient_checkpointing_kwargs)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": plan.ckpt_reentrant})
    return model


class _Accelerator:
    parallelism_config = None
    num_processes = 1

    @staticmethod
    def gather_for_metrics(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(1)  # a constant FakeTensor: `.item()` and `> 0` work on it


def _sft_stub(plan: TrainingPlan, model: torch.nn.Module):
    from collections import defaultdict

    args = types.SimpleNamespace(loss_type=plan.loss_type or "nll", average_tokens_across_devices=True,
                                 label_smoothing_factor=0.0)
    return types.SimpleNamespace(model=model, args=args, accelerator=_Accelerator(), aux_loss_enabled=False,
                                 compute_loss_func=None, label_smoother=None, router_aux_loss_coef=0.0,
                                 _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                                 _total_train_tokens=0, _tp_size=1)


def _sft_loss(plan: TrainingPlan):
    from trl import SFTTrainer

    def loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        stub = _sft_stub(plan, model)

        def call(**kw):  # the all-ones mask of an unpadded batch: a real run drops it (see the module docstring)
            kw.pop("attention_mask", None)
            return model(**kw)

        return SFTTrainer.compute_loss(stub, call, batch)

    return loss


def _reference_model(config: dict, plan: TrainingPlan):
    """DPOTrainer's frozen reference (no PEFT, no precomputed log-probs): the model loaded again, dropout off,
    eval mode, its own fused head (`add_fused_lm_head(self.ref_model)`)."""
    from vramplan.estimator.trainers import reference_copy

    if not reference_copy(plan):
        return None
    from trl.trainer.utils import add_fused_lm_head

    ref = build_model(config, plan, device="cpu", trace=True)
    ref.requires_grad_(False)
    ref.eval()
    add_fused_lm_head(ref)
    return ref


def _dpo_loss(plan: TrainingPlan, ref_model, beta: float = 0.1):
    """The allocating part of `DPOTrainer._compute_loss` (TRL 1.16, loss_type "sigmoid"), with TRL's own pieces:
    the policy forward through the fused head, the reference forward under no_grad with checkpointing disabled
    (`disable_gradient_checkpointing`) and, with PEFT, the adapters disabled (`use_adapter(model, None)`), the
    sequence log-prob sums and `-logsigmoid(beta * delta)`. Not run: the metrics after the loss, which index
    with boolean masks (`mean_logits[mask.bool()]`: data-dependent, no FakeTensor can run it); they are
    [pairs]-sized reductions."""
    import torch.nn.functional as F
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    def loss(model, batch: dict) -> torch.Tensor:
        completion_mask = batch["completion_mask"]
        seq_len = completion_mask[..., 1:].size(1)
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        kwargs = {"input_ids": batch["input_ids"], "use_cache": False}  # the all-ones mask: see the docstring
        outputs = model(**kwargs, labels=labels, fused_lm_head=True)
        chosen, rejected = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        if plan.precompute_ref_log_probs:
            ref_chosen, ref_rejected = torch.zeros_like(chosen), torch.zeros_like(rejected)
        else:
            ckpt = {"use_reentrant": plan.ckpt_reentrant}
            with torch.no_grad(), disable_gradient_checkpointing(model, ckpt):
                if ref_model is None:
                    with use_adapter(model, adapter_name=None):
                        ref_out = model(**kwargs, labels=labels, fused_lm_head=True)
                else:
                    ref_out = ref_model(**kwargs, labels=labels, fused_lm_head=True)
            ref_chosen, ref_rejected = ref_out.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
            del ref_out
        delta = (chosen - ref_chosen) - (rejected - ref_rejected)
        return (-F.logsigmoid(beta * delta)).mean()

    return loss


def _loop_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, object]:
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    return out.loss, out  # the caller keeps `out` through backward


def _step(model, optimizer, plan: TrainingPlan, tracker: MemoryTracker, config: dict, loss_fn, held: dict):
    """One optimizer step. A custom loop's `outputs` is rebound when the next forward returns: the previous one
    lives through this forward, and this one through backward, the optimizer step and the next forward."""
    peaks = dict.fromkeys(PHASES, 0)
    snaps: dict[str, list[Allocation]] = {}
    vocab = int(config.get("vocab_size") or model.config.vocab_size)
    batches = []
    rows = 2 * plan.batch if plan.trainer == "trl-dpo" else plan.batch  # chosen + rejected
    for _ in range(plan.grad_accum):
        ids = torch.randint(0, vocab, (rows, plan.seq), dtype=torch.int64)
        if plan.trainer == "trl-dpo":  # DataCollatorForPreference; every token a completion token
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.ones_like(ids)}
        else:
            batch = {"input_ids": ids, "labels": ids.clone()}
        if plan.packing:  # padding-free collator: one row, position_ids restart per packed row, no attention_mask
            batch = {"input_ids": ids.reshape(1, -1), "labels": ids.reshape(1, -1).clone(),
                     "position_ids": torch.arange(plan.seq).repeat(plan.batch).unsqueeze(0)}
        elif plan.trainer == "trl-sft":
            batch["attention_mask"] = torch.ones_like(ids)
        batches.append(batch)
        with tracker.phase("forward"), _autocast(plan, "cpu"):  # Trainer: compute_loss under autocast
            result = loss_fn(model, dict(batch))
            loss, held["outputs"] = result if isinstance(result, tuple) else (result, None)
        _keep_peak(tracker, "forward", peaks, snaps)
        with tracker.phase("backward"):
            (loss / plan.grad_accum if plan.grad_accum > 1 else loss).backward()
            del loss, result
        _keep_peak(tracker, "backward", peaks, snaps)
    with tracker.phase("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _keep_peak(tracker, "optimizer", peaks, snaps)
    del batches
    return peaks, snaps


def packed_rows() -> contextlib.AbstractContextManager:
    """transformers' own `find_packed_sequence_indices` while the step runs (see the module docstring). Call it
    before the tracing session patches it: the function captured here, at the call, is the library's."""
    from transformers import masking_utils

    library = masking_utils.find_packed_sequence_indices

    @contextlib.contextmanager
    def run() -> Iterator[None]:
        patched = masking_utils.find_packed_sequence_indices
        masking_utils.find_packed_sequence_indices = library
        try:
            yield
        finally:
            masking_utils.find_packed_sequence_indices = patched

    return run()


@contextlib.contextmanager
def triton_tiles() -> Iterator[None]:
    """Run TRL's `ChunkedLogProbFunction` on its CUDA path (trl/kernels/chunked_logprob.py, TRL 1.16).

    On CUDA the tile folds are Triton kernels (`_forward_kernel`, `_backward_kernel`) that read the bf16 tile and
    write in place into buffers the function allocated: they allocate no tensor. `_addmm_fp32` is one
    `torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)`: no tensor either. On CPU both fall back to torch
    ops with fp32 temporaries of the tile's size (`_forward_tile`, `_backward_tile`, `a.float()`), which no GPU run
    allocates. Patched here: the kernels are launched as no-ops, so what is traced is what the CUDA path allocates
    (the buffers, the tiles, the gradients). The token selection of `add_fused_lm_head` still takes its non-Triton
    branch (every position scored: `hidden[mask]` needs the data); with every label valid it scores as many
    tokens as the CUDA branch.
    """
    import trl.trainer.utils  # noqa: F401 - binds the real `_use_triton` for the token selection first
    from trl.kernels import chunked_logprob as ck

    class _Launcher:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    saved = {k: getattr(ck, k, None) for k in ("_use_triton", "_forward_kernel", "_backward_kernel", "triton",
                                               "_addmm_fp32")}
    ck._use_triton = lambda device: True
    ck._forward_kernel = ck._backward_kernel = _Launcher()
    ck.triton = types.SimpleNamespace(cdiv=lambda a, b: -(-a // b))
    ck._addmm_fp32 = lambda acc, a, b: None
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                delattr(ck, k)
            else:
                setattr(ck, k, v)


def measure_eval_step(config: dict, plan: TrainingPlan, *, trace: bool = True, seed: int = 0) -> int:
    """Peak live bytes of `Trainer.evaluation_loop` after one training step (optimizer states resident, gradients
    None): `eval_accumulation_steps` (or 1) prediction steps, `all_preds` / `all_labels` in transformers' own
    `EvalLoopContainer`, then `to_cpu_and_numpy` (here: dropped). hf/loop: `Trainer.prediction_step`'s
    `model(**inputs)` under no_grad; trl-sft: `SFTTrainer.prediction_step` on the stand-in."""
    from transformers.trainer_pt_utils import EvalLoopContainer

    hf_config(config)
    tiles = triton_tiles() if plan.trainer in ("trl-sft", "trl-dpo") else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), _session(trace, config.get("model_type")), \
            tiles:
        torch.manual_seed(seed)
        warnings.simplefilter("ignore")
        with MemoryTracker(record=True) as tracker:
            model = build_model(config, plan, device="cpu", trace=trace)
            model = prepare_sft_model(model, plan) if plan.trainer == "trl-sft" else prepare_model(model, plan)
            optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], plan)
            loss_fn = _sft_loss(plan) if plan.trainer == "trl-sft" else _loop_loss
            _step(model, optimizer, plan, tracker, config, loss_fn, {})
            gc.collect(GC_GENERATION)
            model.eval()
            vocab = int(config.get("vocab_size") or model.config.vocab_size)
            preds, labels_c = EvalLoopContainer(True, -100), EvalLoopContainer(True, -100)
            logits = None
            with tracker.phase("eval"):
                for _ in range(plan.eval_accumulation_steps or 1):
                    ids = torch.randint(0, vocab, (plan.eval_batch, plan.seq), dtype=torch.int64)
                    batch = {"input_ids": ids, "labels": ids.clone()}
                    if plan.trainer == "trl-sft":
                        batch["attention_mask"] = torch.ones_like(ids)
                    with _autocast(plan, "cpu"):
                        loss, logits, labels = _predict(model, plan, batch)
                    if logits is not None:
                        preds.add(logits)
                        labels_c.add(labels)
                    del batch, ids, loss, labels
            peak = tracker.peak_bytes
    return peak


def _predict(model, plan: TrainingPlan, batch: dict):
    """(loss, logits, labels) of one prediction step, as the trainer's own `prediction_step` returns them."""
    if plan.trainer == "trl-sft":
        from trl import SFTTrainer

        stub = _sft_stub(plan, model)
        stub._prepare_inputs = lambda inputs: inputs
        stub.compute_loss_context_manager = contextlib.nullcontext
        stub.compute_loss = types.MethodType(SFTTrainer.compute_loss, stub)

        def call(**kw):
            kw.pop("attention_mask", None)
            return model(**kw)

        return SFTTrainer.prediction_step(stub, call, batch, plan.prediction_loss_only)
    with torch.no_grad():  # Trainer.prediction_step: outputs = model(**inputs); loss = outputs["loss"]
        outputs = model(input_ids=batch["input_ids"], labels=batch["labels"])
        loss = outputs.loss.detach()
        logits = None if plan.prediction_loss_only else outputs.logits
        del outputs
    return loss, logits, None if plan.prediction_loss_only else batch["labels"]


# The accuracy cases of the trainers (tests/accuracy/test_trainer_grid.py): each traced by
# `measure_trainer_step` at full size and held to the estimator like the main grid (vramplan/measure/grid.py).
def _c(id: str, model: str, **opts):
    from vramplan.measure.grid import Case

    return Case(id, model, opts)


TRAINER_GRID: tuple = (
    # TRL SFT (loss_type nll, the default; dft), QLoRA as TRL runs it (no kbit upcast, bf16 adapters)
    _c("llama3.1-8b-sft-qlora-s2048", "llama3.1-8b", method="qlora", trainer="trl-sft", seq=2048),
    _c("llama3.1-8b-sft-lora-dft-b2", "llama3.1-8b", method="lora", trainer="trl-sft", loss_type="dft", batch=2),
    _c("mistral-7b-sft-qlora-nockpt-b2-s512", "mistral-7b", method="qlora", trainer="trl-sft", grad_ckpt=False,
       batch=2, seq=512),
    _c("qwen3-8b-sft-qlora-drop-accum2", "qwen3-8b", method="qlora", trainer="trl-sft", lora_dropout=0.05,
       grad_accum=2),
    # tokens beyond one 4096-row tile
    _c("llama3.2-3b-sft-lora-alllinear-s8192", "llama3.2-3b", method="lora", trainer="trl-sft",
       targets="all-linear", seq=8192),
    # full fine-tuning: the fused head's fp32 grad_weight; Qwen2.5-1.5B ties lm_head to the embedding
    _c("qwen2.5-1.5b-sft-full-b2", "qwen2.5-1.5b", method="full", trainer="trl-sft", batch=2),
    # fp32 weights under bf16 autocast: per-tile casts of the hidden states and the head weight
    _c("llama3.2-1b-sft-full-fp32-mixed", "llama3.2-1b", method="full", trainer="trl-sft", param_dtype="fp32",
       mixed_precision="bf16"),
    # packing (padding-free): one row of 4 x 1024 tokens, sdpa with the [1, 1, 4096, 4096] block-diagonal mask
    _c("llama3.2-1b-sft-lora-packed-b4-s1024", "llama3.2-1b", method="lora", trainer="trl-sft", packing=True,
       batch=4, seq=1024),
    _c("qwen2.5-1.5b-sft-qlora-packed-b2-s2048", "qwen2.5-1.5b", method="qlora", trainer="trl-sft", packing=True,
       batch=2, seq=2048),
    # Gemma 2: final_logit_softcapping inside the kernel; eager attention
    _c("gemma2-2b-sft-lora-eager", "gemma2-2b", method="lora", trainer="trl-sft", attn="eager"),
    # a custom loop: the previous outputs (logits; the KV cache without checkpointing) alive through the step
    _c("llama3.1-8b-loop-lora-s2048", "llama3.1-8b", method="lora", trainer="loop", seq=2048),
    _c("qwen2.5-7b-loop-qlora-nockpt-s512", "qwen2.5-7b", method="qlora", trainer="loop", grad_ckpt=False,
       seq=512),
    _c("phi3-mini-loop-full-b2-s512", "phi3-mini", method="full", trainer="loop", batch=2, seq=512),
    _c("qwen2.5-0.5b-loop-lora-accum2-b2", "qwen2.5-0.5b", method="lora", trainer="loop", grad_accum=2, batch=2),
    # DPO: chosen + rejected rows; the reference forward (PEFT: adapters disabled; full: a frozen copy)
    _c("mistral-7b-dpo-lora-s1024", "mistral-7b", method="lora", trainer="trl-dpo"),
    _c("llama3.1-8b-dpo-qlora-b2", "llama3.1-8b", method="qlora", trainer="trl-dpo", batch=2),
    _c("qwen2.5-1.5b-dpo-full-s512", "qwen2.5-1.5b", method="full", trainer="trl-dpo", seq=512),
    _c("qwen2.5-0.5b-dpo-lora-precomputed", "qwen2.5-0.5b", method="lora", trainer="trl-dpo",
       precompute_ref_log_probs=True),
)


# Eval steps (measure_eval_step) against the estimate's eval phase
EVAL_GRID: tuple = (
    _c("llama3.1-8b-eval-qlora-b4-s2048", "llama3.1-8b", method="qlora", seq=2048, eval_batch=4),
    _c("llama3.1-8b-eval-sft-qlora-b8-s2048", "llama3.1-8b", method="qlora", trainer="trl-sft", seq=2048,
       eval_batch=8),
    _c("qwen2.5-1.5b-eval-lora-preds-accum2", "qwen2.5-1.5b", method="lora", seq=512, eval_batch=2,
       prediction_loss_only=False, eval_accumulation_steps=2),
)


def run_eval_case(case) -> dict:
    from vramplan.api import estimate
    from vramplan.measure.grid import error_pct
    from vramplan.models import preset_config, resolve_model
    from vramplan.plan import make_plan

    plan = make_plan(**case.opts)
    traced = measure_eval_step(preset_config(case.model), plan)
    est = estimate(resolve_model(case.model), plan).phases["eval"]
    return {"id": case.id, "traced": traced, "estimate": est, "error_pct": error_pct(est, traced)}


def trainer_case(case_id: str):
    for c in TRAINER_GRID + EVAL_GRID:
        if c.id == case_id:
            return c
    raise KeyError(case_id)


def run_trainer_case(case) -> dict:
    """Trace one trainer case and estimate it (the dict `grid.run_case` returns)."""
    import time

    from vramplan.api import estimate
    from vramplan.measure.grid import PHASE_KEYS, error_pct
    from vramplan.models import preset_config, resolve_model
    from vramplan.plan import make_plan

    plan = make_plan(**case.opts)
    start = time.perf_counter()
    step = measure_trainer_step(preset_config(case.model), plan, trace=True)
    seconds = time.perf_counter() - start
    est = estimate(resolve_model(case.model), plan)
    traced = {p: getattr(step, k) for p, k in PHASE_KEYS.items()}
    traced["peak"] = step.peak_bytes
    phases = est.traced_phases or est.phases
    estimated = dict(phases, peak=max(phases.values()))
    return {
        "id": case.id, "seconds": round(seconds, 1), "traced": traced, "estimate": estimated,
        "error_pct": {p: error_pct(estimated[p], traced[p]) for p in traced},
        "snapshot": [(a.name, a.nbytes) for a in step.peak_snapshot[:12]],
    }
