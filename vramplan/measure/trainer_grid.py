"""The trainers' accuracy cases (tests/accuracy/test_trainer_grid.py): each traced at full size by
`trl_trace.measure_trainer_step` (or `eval_trace.measure_eval_step`) and held to the estimator like the main grid
(vramplan/measure/grid.py)."""

from __future__ import annotations

from vramplan.measure.eval_trace import measure_eval_step
from vramplan.measure.trl_trace import measure_trainer_step


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
    # Liger (liger_trace.py: its Python on the CUDA path, Triton launches as no-ops): the fused linear
    # cross-entropy under HF Trainer and a custom loop, the layer kernels under TRL's own fused head
    _c("llama3.2-1b-liger-lora-b2-s1024", "llama3.2-1b", method="lora", liger=True, batch=2, seq=1024),
    _c("llama3.2-1b-liger-lora-nockpt-s1024", "llama3.2-1b", method="lora", liger=True, grad_ckpt=False,
       seq=1024),
    _c("llama3.1-8b-liger-qlora-s2048", "llama3.1-8b", method="qlora", liger=True, seq=2048),
    _c("qwen2.5-1.5b-liger-loop-lora-b2", "qwen2.5-1.5b", method="lora", trainer="loop", liger=True, batch=2),
    _c("qwen3-8b-sft-liger-qlora-s2048", "qwen3-8b", method="qlora", trainer="trl-sft", liger=True, seq=2048),
    # TRL activation offloading (offload_trace.py: TRL's own hooks, host copies on the meta device)
    _c("llama3.2-1b-sft-lora-offload-nockpt-b2-s1024", "llama3.2-1b", method="lora", trainer="trl-sft",
       activation_offloading=True, grad_ckpt=False, batch=2, seq=1024),
    _c("llama3.2-1b-sft-lora-offload-b2-s1024", "llama3.2-1b", method="lora", trainer="trl-sft",
       activation_offloading=True, batch=2, seq=1024),
    _c("llama3.1-8b-sft-qlora-offload-nockpt-s1024", "llama3.1-8b", method="qlora", trainer="trl-sft",
       activation_offloading=True, grad_ckpt=False, seq=1024),
    # ORPO (trl.experimental.orpo): chosen + rejected rows, the full logits, TRL's selective_log_softmax kernel
    _c("llama3.2-1b-orpo-lora-b2-s1024", "llama3.2-1b", method="lora", trainer="trl-orpo", batch=2, seq=1024),
    _c("qwen2.5-1.5b-orpo-full-s512", "qwen2.5-1.5b", method="full", trainer="trl-orpo", seq=512),
    _c("llama3.1-8b-orpo-lora-s1024", "llama3.1-8b", method="lora", trainer="trl-orpo", seq=1024),
    # KTO: the KL rows through the policy (no grad), the reference's KL and main passes after the policy forward
    _c("llama3.1-8b-kto-qlora-b2-s1024", "llama3.1-8b", method="qlora", trainer="trl-kto", batch=2, seq=1024),
    _c("qwen2.5-1.5b-kto-full-b2-s512", "qwen2.5-1.5b", method="full", trainer="trl-kto", batch=2, seq=512),
    _c("mistral-7b-kto-lora-b2-s1024", "mistral-7b", method="lora", trainer="trl-kto", batch=2, seq=1024),
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
    from vramplan.estimator.evaluation import eval_peak
    from vramplan.measure.grid import error_pct
    from vramplan.models import preset_config, resolve_model
    from vramplan.plan import make_plan

    plan = make_plan(**case.opts)
    traced = measure_eval_step(preset_config(case.model), plan)
    model = resolve_model(case.model)
    # the CPU tracer's view: bitsandbytes' gemm_4bit dequantizes inside the op on CUDA only
    cpu_only = eval_peak(model, plan, 0, cuda=False) - eval_peak(model, plan, 0)
    est = estimate(model, plan).phases["eval"] + cpu_only
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
