"""Trace speed: one traced QLoRA step of Llama-2-7B at full size (FakeTensorMode), wall and CPU seconds.

    python benchmarks/trace_speed.py

Moved here from tests/measure/test_full_size_trace.py (issue 10: no wall-clock assertions in tests; that test
still pins the bytes). Needs the `measure` extra.
"""

from __future__ import annotations

import os
import resource
import time

from vramplan.measure.trainer import measure_step
from vramplan.plan import make_plan
from vramplan.units import format_bytes

LLAMA2_7B = {  # meta-llama/Llama-2-7b-hf config.json
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}

if __name__ == "__main__":
    print(f"load average (1, 5, 15 min): {os.getloadavg()}, {os.cpu_count()} CPUs")
    plan = make_plan(method="qlora", quant="nf4", double_quant=True, rank=8, targets="q_proj,v_proj",
                     grad_ckpt=True, batch=1, seq=1024)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    step = measure_step(LLAMA2_7B, plan, trace=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"Llama-2-7B QLoRA seq 1024 traced step: {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"(imports included), peak RSS growth {format_bytes(rss_growth, 'MiB')}, "
          f"peak {format_bytes(step.peak_bytes)}")
