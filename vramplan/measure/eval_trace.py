"""Trace transformers' evaluation step (`plan.eval_batch`) after one training step: `measure_eval_step`.
The 4-bit linears take the CUDA path (`cuda_4bit_path`); the estimate's CPU view (`eval_peak(cuda=False)`) is what
the trace is held to, as the training phases are held to `traced_phases`.

`Trainer.evaluate` -> `evaluation_loop` -> `prediction_step`, between training steps (the optimizer states
resident, the gradients None): transformers' own `EvalLoopContainer` holds `all_preds` / `all_labels`;
`to_cpu_and_numpy` (the move to the host) is a drop here. hf/loop: `Trainer.prediction_step`'s
`model(**inputs)` under no_grad; trl-sft: `SFTTrainer.prediction_step` on the stand-in of trl_trace.py.
"""

from __future__ import annotations

import contextlib
import gc
import types
import warnings

import torch

from vramplan.measure.build import build_model, hf_config
from vramplan.measure.optimizers import build_optimizer
from vramplan.measure.tracker import MemoryTracker
from vramplan.measure.trainer import GC_GENERATION, _autocast, _session, prepare_model
from vramplan.measure.trl_kernels import triton_tiles
from vramplan.measure.trl_trace import _loop_loss, _sft_loss, _sft_stub, _step, prepare_sft_model
from vramplan.plan import TrainingPlan


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
            cuda_4bit_path(model)
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


def cuda_4bit_path(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' 4-bit linears on the path a GPU takes in eval. bitsandbytes 0.50 `Linear4bit.forward`
    repacks its weight for the AVX512-BF16 CPU kernel on the first call outside training without grad
    (`_convert_weight_packed_for_cpu`: new packed weights, their temporaries, then `gemv_4bit`), which no CUDA
    run does; with `support_avx512bf16_for_cpu` off the CPU calls `gemm_4bit` as CUDA does."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


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


