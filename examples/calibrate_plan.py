"""Calibrate a plan from Python: run one real training step, compare it with the estimate, keep the record.

    python examples/calibrate_plan.py            # a tiny llama on the CPU: a few seconds
    python examples/calibrate_plan.py llama-7b   # traced: the full-size QLoRA step in FakeTensorMode

Needs the measuring extra: pip install "vramplan[measure]". On a GPU, pass device="cuda" to `calibrate` to
measure torch.cuda.max_memory_allocated()/max_memory_reserved(), the CUDA context and paged optimizer states.
"""

import sys
import tempfile
from pathlib import Path

from vramplan.measure.run import calibrate
from vramplan.measure.store import CalibrationStore
from vramplan.models import spec_from_config
from vramplan.plan import make_plan
from vramplan.units import format_bytes

# A llama with the real architecture and tiny sizes, so the step runs for real on any CPU.
TINY_LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512)


def main() -> None:
    if len(sys.argv) > 1:
        model, trace, plan = sys.argv[1], True, make_plan(method="qlora")
    else:
        model, trace = spec_from_config(TINY_LLAMA, "tiny-llama", "example"), False
        plan = make_plan(method="qlora", rank=16, targets="all-linear", seq=64, batch=2)

    with tempfile.TemporaryDirectory() as tmp:
        # A store of our own; leave `store` out to use the default ($VRAMPLAN_CALIBRATION_DB or ~/.cache/vramplan).
        store = CalibrationStore(Path(tmp) / "calibrations.sqlite3")
        record = calibrate(model, plan, trace=trace, store=store)
        stored = store.records()

    print(f"{record.model} ({'traced' if record.traced else record.device}), calibration #{record.id}:")
    print(f"  {'':24s} {'measured':>14s} {'estimated':>14s} {'error':>9s}")
    for name, row in record.by_phase.items():
        print(_row(name, row))
    print("live at the peak, by component:")
    for name, row in record.by_component.items():
        if row.measured_bytes or row.estimate_bytes:
            print(_row(name, row))
    print(f"stored and read back: {stored == [record]}")


def _row(name, row) -> str:
    error = "-" if row.error_pct is None else f"{row.error_pct:+.2f}%"
    return (f"  {name:24s} {format_bytes(row.measured_bytes, 'auto', 3):>14s}"
            f" {format_bytes(row.estimate_bytes, 'auto', 3):>14s} {error:>9s}")


if __name__ == "__main__":
    main()
