"""The accuracy grid: plans traced at full size and compared with the estimator, phase by phase.

Each case is a preset and plan options (`make_plan` keywords). `run_case` traces the plan with the micro-trainer
(`measure_step(..., trace=True)`) and returns the traced and estimated bytes per phase. The suite in
tests/accuracy holds every case to 3% on the peak and 5% per phase; `python -m vramplan.measure.grid` prints the
table.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

PEAK_TOLERANCE_PCT = 3.0
PHASE_TOLERANCE_PCT = 5.0
PHASE_KEYS = {"load": "load_bytes", "forward": "forward_peak_bytes", "backward": "backward_peak_bytes",
              "optimizer": "optimizer_peak_bytes"}


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    opts: dict = field(default_factory=dict)


def _c(id: str, model: str, **opts) -> Case:
    return Case(id, model, opts)


GRID: tuple[Case, ...] = (
    # llama (LLaMA-2 7B): the seeds' recipe and its knobs
    _c("llama2-7b-qlora-recipe", "llama2-7b", method="qlora"),
    _c("llama2-7b-qlora-nockpt-s512", "llama2-7b", method="qlora", grad_ckpt=False, seq=512),
    _c("llama2-7b-qlora-fp4-nodq-alllinear-r16-s2048", "llama2-7b", method="qlora", quant="fp4",
       double_quant=False, targets="all-linear", rank=16, seq=2048, optimizer="adamw_8bit"),
    _c("llama2-7b-qlora-noupcast-b2-drop", "llama2-7b", method="qlora", kbit_upcast=False, batch=2,
       lora_dropout=0.05),
    _c("llama2-7b-lora-recipe", "llama2-7b", method="lora"),
    _c("llama2-7b-lora-attn-r32-nockpt-b2-drop", "llama2-7b", method="lora", targets="attention", rank=32,
       grad_ckpt=False, seq=512, batch=2, lora_dropout=0.1),
    _c("llama2-7b-full-ckpt", "llama2-7b", method="full"),
    _c("llama2-7b-full-sgd-nockpt-s512", "llama2-7b", method="full", grad_ckpt=False, seq=512, optimizer="sgd"),
    _c("llama2-13b-qlora-recipe", "llama2-13b", method="qlora"),
    # llama 3.x: vocabulary 128k, GQA
    _c("llama3.1-8b-qlora-s4096", "llama3.1-8b", method="qlora", seq=4096),
    _c("llama3.1-8b-lora-alllinear-r64-s2048-eager", "llama3.1-8b", method="lora", targets="all-linear", rank=64,
       seq=2048, attn="eager"),
    _c("llama3.1-8b-qlora-nockpt-b2", "llama3.1-8b", method="qlora", grad_ckpt=False, batch=2),
    _c("llama3.1-8b-full-adamw8bit-b4-s512", "llama3.1-8b", method="full", batch=4, seq=512,
       optimizer="adamw_8bit"),
    _c("llama3.2-1b-full-fp32-mixed-b2", "llama3.2-1b", method="full", param_dtype="fp32",
       mixed_precision="bf16", batch=2),
    _c("llama3.2-3b-lora-fp32-mixed-nockpt-alllinear", "llama3.2-3b", method="lora", param_dtype="fp32",
       mixed_precision="bf16", grad_ckpt=False, targets="all-linear", seq=512),
    _c("llama3.2-3b-qlora-b4-s2048-sgdm", "llama3.2-3b", method="qlora", batch=4, seq=2048,
       optimizer="sgd_momentum"),
    # mistral
    _c("mistral-7b-qlora-s4096-reentrant", "mistral-7b", method="qlora", seq=4096, ckpt_reentrant=True),
    _c("mistral-7b-lora-b8-fused", "mistral-7b", method="lora", batch=8, optimizer="adamw_fused"),
    _c("mistral-7b-qlora-attn-r16-nodq-nockpt-b2-eager", "mistral-7b", method="qlora", targets="attention",
       rank=16, double_quant=False, grad_ckpt=False, batch=2, attn="eager"),
    # qwen2 (biases on q/k/v; 0.5B ties its embeddings)
    _c("qwen2.5-7b-qlora-recipe", "qwen2.5-7b", method="qlora"),
    _c("qwen2.5-7b-lora-alllinear-b2-s2048-paged32", "qwen2.5-7b", method="lora", targets="all-linear", batch=2,
       seq=2048, optimizer="paged_adamw_32bit"),
    _c("qwen2.5-7b-lora-accum4-b2", "qwen2.5-7b", method="lora", grad_accum=4, batch=2),
    _c("qwen2.5-0.5b-full-nockpt-b4", "qwen2.5-0.5b", method="full", grad_ckpt=False, batch=4),
    _c("qwen2.5-1.5b-qlora-drop-nockpt-b8-s512-lion", "qwen2.5-1.5b", method="qlora", lora_dropout=0.05,
       grad_ckpt=False, batch=8, seq=512, optimizer="lion_8bit"),
    # qwen3 (q/k norms)
    _c("qwen3-8b-qlora-recipe", "qwen3-8b", method="qlora"),
    _c("qwen3-8b-lora-drop-s2048", "qwen3-8b", method="lora", lora_dropout=0.05, seq=2048),
    # phi3 (fused qkv and gate_up)
    _c("phi3-mini-qlora-recipe", "phi3-mini", method="qlora"),
    # Phi-3's 2047-token sliding window: from seq 2047 on, sdpa gets an explicit mask
    _c("phi3-mini-qlora-s4096-slidingmask", "phi3-mini", method="qlora", seq=4096),
    _c("phi3-mini-lora-alllinear-nockpt-b2-drop", "phi3-mini", method="lora", targets="all-linear",
       grad_ckpt=False, batch=2, lora_dropout=0.05),
    _c("phi3-mini-full-ckpt-s2048-adafactor", "phi3-mini", method="full", seq=2048, optimizer="adafactor"),
    # gemma2 (sandwich norms, logit softcapping, eager attention)
    _c("gemma2-2b-qlora-eager", "gemma2-2b", method="qlora", attn="eager"),
    _c("gemma2-2b-lora-b2-s2048-eager", "gemma2-2b", method="lora", batch=2, seq=2048, attn="eager"),
    _c("gemma2-2b-full-b2-s512-eager", "gemma2-2b", method="full", batch=2, seq=512, attn="eager"),
    _c("gemma2-2b-full-accum2-s512-eager", "gemma2-2b", method="full", grad_accum=2, seq=512, attn="eager"),
    _c("gemma2-9b-qlora-alllinear-nockpt-eager", "gemma2-9b", method="qlora", targets="all-linear",
       grad_ckpt=False, attn="eager"),
    # MoE
    # peft's kbit upcast makes the fused 3-D expert weights fp32, and transformers' default grouped_mm experts
    # take bf16 only (torch.nn.functional.grouped_mm): QLoRA of an MoE runs without the upcast.
    _c("qwen3-30b-a3b-qlora-noupcast", "qwen3-30b-a3b", method="qlora", kbit_upcast=False),
    _c("mixtral-8x7b-qlora-noupcast-nockpt-s512", "mixtral-8x7b", method="qlora", kbit_upcast=False,
       grad_ckpt=False, seq=512),
    _c("qwen3-30b-a3b-lora-attn-s512", "qwen3-30b-a3b", method="lora", targets="attention", seq=512),
    _c("qwen3-30b-a3b-lora-nockpt-b2-s512", "qwen3-30b-a3b", method="lora", grad_ckpt=False, batch=2, seq=512),
    _c("mixtral-8x7b-lora-recipe", "mixtral-8x7b", method="lora"),
    # Architectures without a hand-written spec: traits read on the meta device (measure/arch_configs.py)
    _c("pythia-1.4b-lora-nockpt", "pythia-1.4b", method="lora", grad_ckpt=False),
    _c("pythia-1.4b-qlora-alllinear", "pythia-1.4b", method="qlora", targets="all-linear"),
    _c("olmo2-7b-lora-nockpt-s512", "olmo2-7b", method="lora", grad_ckpt=False, seq=512),
    _c("olmo2-7b-qlora-recipe", "olmo2-7b", method="qlora"),
    _c("starcoder2-3b-qlora-nockpt", "starcoder2-3b-noattndrop", method="qlora", grad_ckpt=False),
    _c("starcoder2-3b-lora-alllinear", "starcoder2-3b-noattndrop", method="lora", targets="all-linear"),
    _c("phi-2-lora-nockpt-drop", "phi-2", method="lora", grad_ckpt=False, lora_dropout=0.05),
    _c("phi-2-qlora-recipe", "phi-2", method="qlora"),
    _c("stablelm2-1.6b-lora-alllinear-nockpt", "stablelm2-1.6b", method="lora", targets="all-linear",
       grad_ckpt=False),
    _c("stablelm2-1.6b-qlora-nockpt-b2", "stablelm2-1.6b", method="qlora", grad_ckpt=False, batch=2),
    # peft 0.21 moves MoE expert targets to the fused 3-D parameters (ParamWrapper: a new weight per forward)
    _c("qwen3-30b-a3b-lora-alllinear-s512", "qwen3-30b-a3b", method="lora", targets="all-linear", seq=512),
    _c("qwen3-30b-a3b-lora-v4names-nockpt-s256", "qwen3-30b-a3b", method="lora",
       targets="q_proj,v_proj,gate_proj,up_proj,down_proj", grad_ckpt=False, seq=256),
    _c("qwen3-30b-a3b-qlora-noupcast-alllinear-s512", "qwen3-30b-a3b", method="qlora", kbit_upcast=False,
       targets="all-linear", seq=512),
    _c("mixtral-8x7b-lora-alllinear-s512", "mixtral-8x7b", method="lora", targets="all-linear", seq=512),
    # DoRA: a magnitude vector per wrapped linear, the weight norm (fp32 copies of each weight) every forward
    _c("llama3.2-1b-lora-dora-nockpt-s512", "llama3.2-1b", method="lora", use_dora=True, grad_ckpt=False,
       seq=512),
    _c("llama3.2-3b-qlora-dora-alllinear", "llama3.2-3b", method="qlora", use_dora=True, targets="all-linear"),
    _c("qwen2.5-1.5b-lora-dora-bias-drop-nockpt", "qwen2.5-1.5b", method="lora", use_dora=True,
       lora_dropout=0.05, grad_ckpt=False, seq=512),
    _c("qwen2.5-1.5b-lora-dora-bias", "qwen2.5-1.5b", method="lora", use_dora=True, targets="all-linear"),
    # peft trainable_token_indices: new embedding rows trained, a merged embedding matrix every forward
    _c("llama3.1-8b-lora-tokens16-nockpt-s512", "llama3.1-8b", method="lora", trainable_tokens=16,
       grad_ckpt=False, seq=512),
    _c("llama3.1-8b-qlora-tokens1024", "llama3.1-8b", method="qlora", trainable_tokens=1024),
    # peft modules_to_save: trainable deep copies of the embedding / lm_head in the base dtype (fp32 after the
    # kbit upcast), their gradients and optimizer states beside the fp32 adapters
    _c("llama3.1-8b-lora-save-embed-lmhead-s512", "llama3.1-8b", method="lora",
       modules_to_save="embed_tokens,lm_head", seq=512, optimizer="adamw"),
    _c("mistral-7b-qlora-save-lmhead-nockpt-s512", "mistral-7b", method="qlora", modules_to_save="lm_head",
       grad_ckpt=False, seq=512),
    # --transformers 4: gradient_checkpointing_enable's default is reentrant there (traced with transformers 5's
    # modelling code and use_reentrant=True: the 4.x library itself is not installed)
    _c("llama3.2-3b-lora-tf4-alllinear-s2048", "llama3.2-3b", method="lora", transformers=4, targets="all-linear",
       seq=2048),
)


def case(case_id: str) -> Case:
    for c in GRID:
        if c.id == case_id:
            return c
    raise KeyError(case_id)


def error_pct(estimate: int, measured: int) -> float:
    return 100.0 * (estimate - measured) / measured


def run_case(c: Case) -> dict:
    """Trace one case and estimate it: {'traced': {phase: bytes}, 'estimate': {...}, 'error_pct': {...}}."""
    from vramplan.api import estimate
    from vramplan.measure.arch_configs import ARCH_CONFIGS
    from vramplan.measure.trainer import measure_step
    from vramplan.models import preset_config, resolve_model, spec_from_config
    from vramplan.plan import make_plan

    plan = make_plan(**c.opts)
    config = ARCH_CONFIGS.get(c.model) or preset_config(c.model)  # architectures without a preset
    start = time.perf_counter()
    step = measure_step(config, plan, trace=True)
    seconds = time.perf_counter() - start
    model = spec_from_config(config, c.model, "grid") if c.model in ARCH_CONFIGS else resolve_model(c.model)
    est = estimate(model, plan)
    traced = {p: getattr(step, k) for p, k in PHASE_KEYS.items()}
    traced["peak"] = step.peak_bytes
    phases = est.traced_phases or est.phases  # the tracer cannot see CUDA-kernel temporaries
    estimated = dict(phases, peak=max(phases.values()))
    return {
        "id": c.id, "seconds": round(seconds, 1), "traced": traced, "estimate": estimated,
        "error_pct": {p: error_pct(estimated[p], traced[p]) for p in traced},
        "traced_peak_phase": step.peak_phase, "estimate_peak_phase": max(phases, key=phases.get),
        "snapshot": [(a.name, a.nbytes) for a in step.peak_snapshot[:12]],
    }


def _run_isolated(c: Case) -> dict:
    try:
        return run_case(c)
    except Exception as exc:  # noqa: BLE001 - the table reports it
        return {"id": c.id, "failed": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    import json
    import multiprocessing as mp

    ids = [a for a in argv if not a.startswith("-")]
    cases = [case(i) for i in ids] if ids else list(GRID)
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_run_isolated, cases, chunksize=1)
    if "--json" in argv:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        if "failed" in r:
            print(f"{r['id']:50} FAILED {r['failed'][:200]}")
            continue
        e = r["error_pct"]
        print(f"{r['id']:50} {r['seconds']:5.1f}s peak {r['traced']['peak'] / 2**30:7.2f} GiB "
              + " ".join(f"{p[:3]} {e[p]:+6.2f}%" for p in ("peak", *PHASE_KEYS)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
