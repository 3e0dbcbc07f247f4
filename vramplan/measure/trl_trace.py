"""Trace the step of the other training loops: a custom loop that keeps `outputs`, and TRL's `SFTTrainer`.

`measure_trainer_step(config, plan, trace=True)` does what `measure_step` does (trainer.py) for `plan.trainer`:

- `hf`: `measure_step` itself (HF Trainer: the outputs are dropped before `backward()`); with `plan.liger`, the
  same loss here, on the model `apply_liger` patched (liger_trace.py).
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

import torch

from vramplan.errors import MeasurementError
from vramplan.measure.build import build_model, hf_config, resolve_targets
from vramplan.measure.liger_trace import apply_liger, liger_session
from vramplan.measure.offload_trace import offload_context, offloading_session
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
from vramplan.measure.trl_kernels import packed_rows, triton_tiles, trl_loss_kernel
from vramplan.plan import TrainingPlan


def measure_trainer_step(config: dict, plan: TrainingPlan, *, trace: bool = True, steps: int = 2,
                         seed: int = 0) -> MeasuredStep:
    """One steady-state step of `plan.trainer` on CPU (traced or real), measured as `measure_step` measures."""
    if plan.trainer == "hf" and not plan.liger:
        return measure_step(config, plan, trace=trace, steps=steps, seed=seed)
    if plan.attn == "flash_attention_2":
        raise MeasurementError("attn: flash_attention_2 needs CUDA and the flash-attn package; measure eager or sdpa")
    hf_config(config)
    tiles = triton_tiles() if plan.trainer in ("trl-sft", "trl-dpo", "trl-kto") else \
        trl_loss_kernel() if plan.trainer == "trl-orpo" else contextlib.nullcontext()
    packed = packed_rows() if plan.packing else contextlib.nullcontext()  # before the session patches it
    liger = liger_session(config.get("model_type")) if plan.liger else contextlib.nullcontext()
    offloading = offloading_session() if plan.activation_offloading else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), liger, offloading, \
            _session(trace, config.get("model_type")), tiles, packed:
        torch.manual_seed(seed)
        warnings.simplefilter("ignore")
        with MemoryTracker(record=True) as tracker:
            model = build_model(config, plan, device="cpu", trace=trace)
            model = prepare_model(model, plan) if plan.trainer in ("hf", "loop", "trl-orpo") else \
                prepare_sft_model(model, plan)
            if plan.liger:  # Trainer.__init__: use_liger_kernel
                apply_liger(model, plan)
            ref = _reference_model(config, plan)
            optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], plan)
            tracker.name_modules(model)
            tracker.name_tensors(named_state(model, optimizer))
            gc.collect(GC_GENERATION)
            load = tracker.current_bytes
            loss_fn = {"hf": _hf_loss, "loop": _loop_loss, "trl-sft": _sft_loss(plan), "trl-dpo": _dpo_loss(plan, ref),
                       "trl-orpo": _orpo_loss(), "trl-kto": _kto_loss(plan, ref)}[plan.trainer]
            held: dict = {}  # what the loop keeps between steps (a custom loop's `outputs`)
            if plan.activation_offloading:  # SFTTrainer/DPOTrainer.__init__: get_act_offloading_ctx_manager
                held["offload"] = offload_context(model)
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
        ("log_probs", "entropy", "mean_logits") if plan.trainer == "trl-kto" else \
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


def _hf_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """HF Trainer's `compute_loss`: the outputs die before backward (as `measure_step` runs it)."""
    return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


def _kto_loss(plan: TrainingPlan, ref_model, beta: float = 0.1):
    """The allocating part of `KTOTrainer._compute_loss` (TRL 1.16, loss_type "kto", `calculate_KL`), with TRL's own
    pieces: the KL rows through the policy under no_grad (`_compute_kl_logps`), the policy forward through the fused
    head, the reference's KL and main forwards under no_grad with checkpointing disabled (PEFT: the adapters off),
    and the sigmoid losses. Not run: `torch.nonzero(labels)` (data-dependent, no FakeTensor can run it): the rows
    are split in halves instead ([rows]-sized tensors), and the metrics after the loss."""
    import torch.nn.functional as F
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    def logps(model, batch: dict, prefix: str) -> torch.Tensor:
        ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}completion_mask"]
        labels = ids.masked_fill(mask == 0, -100)
        out = model(input_ids=ids, use_cache=False, labels=labels, fused_lm_head=True)  # the all-ones mask dropped
        return out.log_probs[:, -(labels.size(1) - 1):].sum(-1)

    def loss(model, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            kl_logps = logps(model, batch, "KL_")
        policy = logps(model, batch, "")
        if plan.precompute_ref_log_probs:
            ref_kl, ref = torch.zeros_like(kl_logps), torch.zeros_like(policy)
        else:
            with torch.no_grad(), disable_gradient_checkpointing(model, {"use_reentrant": plan.ckpt_reentrant}):
                with use_adapter(model, adapter_name=None) if ref_model is None else contextlib.nullcontext():
                    reference = model if ref_model is None else ref_model
                    ref_kl = logps(reference, batch, "KL_")
                    ref = logps(reference, batch, "")
        kl = (kl_logps - ref_kl).mean().detach().clamp(min=0)
        half = policy.shape[0] // 2 or 1
        chosen, rejected = policy[:half] - ref[:half], policy[half:] - ref[half:]
        losses = torch.cat((1 - F.sigmoid(beta * (chosen - kl)), 1 - F.sigmoid(beta * (kl - rejected))), 0)
        return losses.mean()

    return loss


def _orpo_loss():
    """TRL 1.16 `trl.experimental.orpo.ORPOTrainer.compute_loss` (its own `concatenated_forward`,
    `get_batch_logps`, `odds_ratio_loss`) on a stand-in carrying what they read. Its metrics call
    `gather_for_metrics(...).mean().item()`: the stand-in returns a constant float FakeTensor (a few bytes)."""
    from trl.experimental.orpo import ORPOTrainer

    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: torch.tensor(1.0))
    stub = types.SimpleNamespace(is_encoder_decoder=False, padding_value=0, label_pad_token_id=-100, beta=0.1,
                                 accelerator=accelerator, aux_loss_enabled=False, _peft_has_been_casted_to_bf16=False,
                                 args=types.SimpleNamespace(device=torch.device("cpu")),
                                 concatenated_inputs=ORPOTrainer.concatenated_inputs,
                                 get_batch_logps=ORPOTrainer.get_batch_logps, store_metrics=lambda *a, **k: None)
    for name in ("odds_ratio_loss", "concatenated_forward", "get_batch_loss_metrics"):
        setattr(stub, name, types.MethodType(getattr(ORPOTrainer, name), stub))

    def loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        def call(*args, **kw):  # the all-ones mask of an unpadded batch: a real run drops it (module docstring)
            kw.pop("attention_mask", None)
            return model(*args, **kw)

        return ORPOTrainer.compute_loss(stub, call, batch)

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
        elif plan.trainer == "trl-kto":  # DataCollatorForUnpairedPreference: the rows and their mismatched KL rows
            batch = {f"{p}{k}": ids.clone() if k == "input_ids" else torch.ones_like(ids) for p in ("", "KL_")
                     for k in ("input_ids", "attention_mask", "completion_mask")}
            batch["label"] = torch.arange(plan.batch) % 2 == 0
        elif plan.trainer == "trl-orpo":  # DPODataCollatorWithPadding: chosen, rejected, prompt (full length)
            batch = {f"{k}_{f}": ids.clone() if f != "attention_mask" else torch.ones_like(ids)
                     for k in ("chosen", "rejected") for f in ("input_ids", "attention_mask", "labels")}
            batch |= {"prompt_input_ids": ids.clone(), "prompt_attention_mask": torch.ones_like(ids)}
        else:
            batch = {"input_ids": ids, "labels": ids.clone()}
        if plan.packing:  # padding-free collator: one row, position_ids restart per packed row, no attention_mask
            batch = {"input_ids": ids.reshape(1, -1), "labels": ids.reshape(1, -1).clone(),
                     "position_ids": torch.arange(plan.seq).repeat(plan.batch).unsqueeze(0)}
        elif plan.trainer == "trl-sft":
            batch["attention_mask"] = torch.ones_like(ids)
        batches.append(batch)
        # TRL's training_step: forward and backward inside the activation-offloading context (offload_trace.py)
        with held.get("offload") or contextlib.nullcontext():
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
