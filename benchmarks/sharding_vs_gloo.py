"""Per-rank measured vs estimated peaks of real data-parallel steps on gloo CPU ranks (markdown table).

    python benchmarks/sharding_vs_gloo.py            # 1, 2 and 4 ranks, every torch engine (~1-2 min on 2 cores)

The cases of tests/distributed/test_gloo_runs.py plus one-rank FSDP; the tests assert what this prints.
"""

from __future__ import annotations

import sys
import time

from vramplan.estimator import estimate_memory
from vramplan.estimator.engines import per_gpu_estimate
from vramplan.estimator.engines.ddp_fsdp import reprice_torch
from vramplan.estimator.single_gpu import estimate_step
from vramplan.measure.distributed import measure_distributed
from vramplan.models import spec_from_config
from vramplan.plan import make_plan

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256)
UNEVEN = dict(TINY, num_hidden_layers=3, vocab_size=250)
ENGINES = ("ddp", "fsdp", "fsdp_grad_op", "zero1")
RUNS = [
    (TINY, 1, [(m, s) for m in ("full", "lora") for s in ("fsdp", "fsdp_grad_op")]),
    (TINY, 2, [(m, s) for m in ("full", "lora") for s in ENGINES] + [("qlora", "fsdp")]
     + [("full", s, {"grad_accum": 2}) for s in ENGINES]),
    (UNEVEN, 4, [("full", "fsdp"), ("lora", "fsdp"), ("full", "fsdp_grad_op"), ("full", "zero1")]),
]


def plan_for(method: str, **options):
    return make_plan(method=method, batch=2, seq=32, **({"optimizer": "adamw"} if method == "qlora" else {}),
                     **options)


def estimate_rank(spec, plan, rank: int):
    if plan.parallelism != "zero1":
        return estimate_memory(spec, plan)
    single = estimate_step(spec, plan)  # torch's ZeRO-1 (ZeroRedundancyOptimizer): ranks differ
    return per_gpu_estimate(plan, single, reprice_torch(spec, plan, single.moments, engine="ddp_zero_redundancy",
                                                         rank=rank))


def main() -> int:
    print("| model | ranks | method | sharding | grad accum | rank | phase | measured (B) | estimated (B) | error |")
    print("| --- | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    worst = 0.0
    for config, world, cases in RUNS:
        spec = spec_from_config(config, "tiny", "benchmark")
        name = f"{config['num_hidden_layers']}L v{config['vocab_size']}"
        plans = [plan_for(m, sharding=s, gpus=world, **(more[0] if more else {})) for m, s, *more in cases]
        start = time.perf_counter()
        measured = measure_distributed(config, plans, world)
        seconds = time.perf_counter() - start
        for plan, ranks in zip(plans, measured):
            for rank, step in enumerate(ranks):
                est = estimate_rank(spec, plan, rank)
                for phase in ("forward", "backward", "optimizer"):
                    got, want = getattr(step, f"{phase}_peak_bytes"), est.phases[phase]
                    err = 100 * (want - got) / got
                    worst = max(worst, abs(err))
                    print(f"| {name} | {world} | {plan.method} | {plan.parallelism} | {plan.grad_accum} | {rank} | "
                          f"{phase} | {got:,} | {want:,} | {err:+.2f}% |")
        print(f"<!-- {world} ranks: {len(plans)} plans in {seconds:.1f} s -->", file=sys.stderr)
    print(f"\nworst |error|: {worst:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
