"""DeepSpeed ZeRO 1-3 for real on gloo CPU ranks, each rank measured with MemoryTracker, against deepspeed.py.

DeepSpeed is not a vramplan dependency (its wheel pins nothing CPU-only, so a plain `pip install deepspeed` pulls a
CUDA build of torch). Without its dependencies it installs in seconds next to the CPU torch, and its CPU
accelerator falls back to gloo; the first run compiles its shared-memory comm op (about a minute, needs g++):

    pip install --no-deps deepspeed==0.19.8 hjson msgpack py-cpuinfo ninja
    python benchmarks/deepspeed_on_cpu.py [WORLD]      # default 2 ranks: full fine-tuning and LoRA, stages 1-3

Each rank runs what an HF Trainer + DeepSpeed script does with bf16 on: the model from vramplan's builder,
`deepspeed.initialize(model, optimizer=AdamW(foreach=True), config)` with the bucket sizes HF fills for "auto",
then `engine(**batch)`, `engine.backward(loss)`, `engine.step()`; the last of two steps is reported.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

CONFIG = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256)
CASES = [(method, stage) for method in ("full", "lora") for stage in (1, 2, 3)]
B, S = 2, 32


def ds_config(stage: int, hidden: int) -> dict:
    return {"train_micro_batch_size_per_gpu": B, "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
            "zero_optimization": {"stage": stage, "reduce_bucket_size": hidden * hidden,
                                  "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                                  "stage3_param_persistence_threshold": 10 * hidden}}


def rank_main(out: Path) -> None:
    import deepspeed
    import torch

    from vramplan.measure.build import build_model
    from vramplan.measure.tracing import warm_caches
    from vramplan.measure.tracker import MemoryTracker
    from vramplan.measure.trainer import prepare_model
    from vramplan.plan import make_plan

    warm_caches(CONFIG["model_type"])
    deepspeed.init_distributed(dist_backend="gloo")
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    rows = []
    for method, stage in CASES:
        plan = make_plan(method=method, batch=B, seq=S, gpus=world, sharding=f"zero{stage}")
        torch.manual_seed(rank)
        with warnings.catch_warnings(), MemoryTracker() as tracker:
            warnings.simplefilter("ignore")
            model = prepare_model(build_model(CONFIG, plan, device="cpu", trace=False), plan)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=True)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                              config=ds_config(stage, CONFIG["hidden_size"]))
            for _ in range(2):
                peaks = {}
                ids = torch.randint(0, CONFIG["vocab_size"], (B, S))
                with tracker.phase("forward"):
                    loss = engine(input_ids=ids, labels=ids.clone()).loss
                peaks["forward"] = tracker.peak_bytes
                with tracker.phase("backward"):
                    engine.backward(loss)
                    del loss
                peaks["backward"] = tracker.peak_bytes
                with tracker.phase("optimizer"):
                    engine.step()
                peaks["optimizer"] = tracker.peak_bytes
        rows.append({"method": method, "stage": stage, **peaks})
        del engine, optimizer, model, params
        gc.collect()
        torch.distributed.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(rows))


def main(world: int) -> int:
    from vramplan.estimator import estimate_memory
    from vramplan.models import spec_from_config
    from vramplan.plan import make_plan

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29617", "WORLD_SIZE": str(world),
               "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", tmp], env={**env, "RANK": str(r),
                                  "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(world)]
        logs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            print(next(log for p, log in zip(procs, logs) if p.returncode)[-4000:], file=sys.stderr)
            return 1
        measured = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    spec = spec_from_config(CONFIG, "tiny", "benchmark")
    print("| ranks | method | sharding | rank | phase | measured (B) | estimated (B) | error |")
    print("| ---: | --- | --- | ---: | --- | ---: | ---: | ---: |")
    for rank, rows in enumerate(measured):
        for row in rows:
            plan = make_plan(method=row["method"], batch=B, seq=S, gpus=world, sharding=f"zero{row['stage']}")
            est = estimate_memory(spec, plan)
            for phase in ("forward", "backward", "optimizer"):
                got, want = row[phase], est.phases[phase]
                print(f"| {world} | {row['method']} | zero{row['stage']} | {rank} | {phase} | {got:,} | {want:,} | "
                      f"{100 * (want - got) / got:+.2f}% |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--rank":
        rank_main(Path(sys.argv[2]))
    else:
        sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
