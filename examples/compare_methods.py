"""Compare full fine-tuning, LoRA and QLoRA across model sizes, and say which fit on a 24 GB card.

    python examples/compare_methods.py
"""

from vramplan.api import compare
from vramplan.plan import make_plan

MODELS = ["llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "qwen2.5-14b", "qwen2.5-32b"]

rows = compare(MODELS, lambda method: make_plan(method=method, seq=1024), gpu="rtx4090")
print(f"{'model':14s} {'method':6s} {'peak GiB':>9s} {'fits rtx4090':>13s}")
for r in rows:
    print(f"{r.model:14s} {r.plan.method:6s} {r.peak_bytes / 2**30:9.2f} {'yes' if r.fits else 'no':>13s}")
