"""Full size: a traced QLoRA step of Llama-2-7B runs on a CPU with almost no real memory.

Plan: the QLoRA paper's recipe at seq 1024 (nf4, double quant, rank 8 on q_proj/v_proj, gradient
checkpointing, paged 8-bit AdamW). The load is pinned to the byte by the hand-derived bitsandbytes layout
(expected_bytes.py); the phase peaks are printed (`pytest -s`) for the record. How long it takes is measured by
`benchmarks/trace_speed.py`, not asserted: a loaded machine must not fail a test.
"""

from __future__ import annotations

import resource
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from expected_bytes import qlora_load_bytes  # noqa: E402

from vramplan.measure.trainer import measure_step  # noqa: E402
from vramplan.plan import make_plan  # noqa: E402
from vramplan.units import GiB, format_bytes  # noqa: E402

LLAMA2_7B = dict(  # meta-llama/Llama-2-7b-hf config.json
    model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
)


@pytest.mark.slow
def test_llama2_7b_qlora_traces_at_full_size():
    plan = make_plan(method="qlora", quant="nf4", double_quant=True, rank=8, targets="q_proj,v_proj",
                     grad_ckpt=True, batch=1, seq=1024)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    step = measure_step(LLAMA2_7B, plan, trace=True)
    seconds = time.perf_counter() - start
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before

    print(f"\nLlama-2-7B QLoRA trace: {seconds:.1f} s, peak RSS growth {format_bytes(rss_growth, 'MiB')}")
    for field in ("load_bytes", "forward_peak_bytes", "backward_peak_bytes", "optimizer_peak_bytes",
                  "after_step_bytes", "peak_bytes"):
        print(f"  {field:22} {getattr(step, field):>14,} B  {format_bytes(getattr(step, field))}")

    assert rss_growth < 1 * GiB  # a real run would hold ~5 GiB
    assert step.load_bytes == qlora_load_bytes(LLAMA2_7B, double_quant=True, upcast=True,
                                               targets=["q_proj", "v_proj"])
    assert step.trainable_params == 32 * 2 * 8 * (4096 + 4096)
    assert step.load_bytes < step.forward_peak_bytes < step.backward_peak_bytes == step.peak_bytes
