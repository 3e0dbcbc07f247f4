"""The per-GPU estimator against real torch.distributed runs: 2 and 4 gloo CPU processes, each rank measured.

Every torch engine the estimator prices runs for real (vramplan/measure/distributed.py): DDP, FSDP2 `fully_shard`
per decoder layer + root (resharding after forward, and not: `fsdp_grad_op`), and DDP with torch's
ZeroRedundancyOptimizer, the torch form of ZeRO-1. Full fine-tuning (bf16, AdamW foreach) and LoRA (bf16 base,
fp32 adapters), gradient checkpointing on; gradient accumulation (FSDP2 reduce-scatters every micro-batch into
the sharded gradients, DDP keeps full ones); and FSDP-QLoRA: FSDP2 shards bitsandbytes' packed 4-bit weights
(all-gathered as bytes), while each rank keeps the whole quant state on the module (bitsandbytes restores it with
`fix_4bit_weight_quant_state_from_module`). Two checks per rank and phase:
- the estimate is within 5% of the measured peak (the issue's bar; it holds to ~0.1%, see the table on failure);
- the *sharding effect* (per-GPU peak minus the single-GPU peak) is estimated within 1% of the peak, measured
  against a single-GPU micro-trainer run of the same plan: this isolates the sharding model from the
  single-GPU activation model it builds on.
DeepSpeed (zero2, zero3) and CPU offload are not run here: see tests/test_sharding.py.

One test per world size, each launching its processes once (the imports dominate: ~5 s of CPU per rank).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from vramplan.estimator import estimate_memory  # noqa: E402
from vramplan.estimator.engines import per_gpu_estimate  # noqa: E402
from vramplan.estimator.engines.ddp_fsdp import reprice_torch  # noqa: E402
from vramplan.estimator.single_gpu import estimate_single_gpu as single_gpu_estimate  # noqa: E402
from vramplan.estimator.single_gpu import estimate_step  # noqa: E402
from vramplan.measure.distributed import measure_distributed  # noqa: E402
from vramplan.measure.trainer import measure_step  # noqa: E402
from vramplan.models import spec_from_config  # noqa: E402
from vramplan.plan import make_plan  # noqa: E402

PHASES = ("forward", "backward", "optimizer")
TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256)
# 4 ranks: 3 layers, and a vocabulary of 250 rows that 4 ranks cannot split evenly (FSDP pads dim 0 to 252;
# rank 3 holds 61 rows of the embedding and lm_head, the others 63)
UNEVEN = dict(TINY, num_hidden_layers=3, vocab_size=250)
B, S = 2, 32


def _plan(method: str, **options):
    # QLoRA with AdamW: bitsandbytes' 8-bit optimizers do not take FSDP2's DTensor parameters
    return make_plan(method=method, batch=B, seq=S, **({"optimizer": "adamw"} if method == "qlora" else {}), **options)


def _plans(world: int, cases: list[tuple]):
    return [_plan(method, sharding=mode, gpus=world, **(more[0] if more else {})) for method, mode, *more in cases]


def _one_gpu(plan):
    return plan.replace(gpus=1, sharding=None)


def _estimate(spec, plan, rank: int):
    """The estimator's numbers for one rank; zero1 is checked as torch runs it (ZeroRedundancyOptimizer)."""
    if plan.parallelism != "zero1":
        return estimate_memory(spec, plan)
    single = estimate_step(spec, plan)
    return per_gpu_estimate(plan, single, reprice_torch(spec, plan, single.moments, engine="ddp_zero_redundancy",
                                                         rank=rank))


def _check(config: dict, world: int, cases: list[tuple[str, str]]) -> None:
    spec = spec_from_config(config, "tiny", "test")
    plans = _plans(world, cases)
    measured = measure_distributed(config, plans, world)
    single = {_one_gpu(p): measure_step(config, _one_gpu(p), trace=True) for p in plans}
    rows, bad = [], []
    for plan, ranks in zip(plans, measured):
        one = single[_one_gpu(plan)]
        one_est = single_gpu_estimate(spec, plan)
        for rank, step in enumerate(ranks):
            est = _estimate(spec, plan, rank)
            for phase in PHASES:
                got, want = getattr(step, f"{phase}_peak_bytes"), est.phases[phase]
                effect_got = got - getattr(one, f"{phase}_peak_bytes")
                effect_want = want - one_est.phases[phase]
                err = (want - got) / got
                effect_err = (effect_want - effect_got) / got
                rows.append(f"{plan.method:5} {plan.parallelism:12} ga{plan.grad_accum} rank {rank} {phase:9} "
                            f"measured {got:9d} estimated {want:9d} {100 * err:+6.2f}%  "
                            f"effect {100 * effect_err:+6.2f}%")
                if abs(err) > 0.05 or abs(effect_err) > 0.01:
                    bad.append(rows[-1])
    assert not bad, "\n".join(["off:", *bad, "all:", *rows])


@pytest.mark.slow
def test_two_ranks_every_torch_engine():
    cases = [(m, s) for m in ("full", "lora") for s in ("ddp", "fsdp", "fsdp_grad_op", "zero1")]
    accumulating = [("full", "fsdp", {"grad_accum": 2}), ("full", "ddp", {"grad_accum": 2})]
    _check(TINY, 2, cases + [("qlora", "fsdp")] + accumulating)


@pytest.mark.slow
def test_four_ranks_with_uneven_shards():
    _check(UNEVEN, 4, [("full", "fsdp"), ("lora", "fsdp"), ("full", "fsdp_grad_op"), ("full", "zero1")])
