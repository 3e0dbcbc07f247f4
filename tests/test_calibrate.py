"""`vramplan calibrate` / `vramplan calibrations` and the calibration store.

Real CPU runs use a tiny llama config (a step takes about a second once the stack is imported); the
Llama-7B QLoRA run is traced (FakeTensorMode, ~6 s, no real memory).
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys

import pytest
from calibration_writer import insert_many

from vramplan.cli import main
from vramplan.measure.records import CalibrationRecord, Comparison, OutOfMemoryRecord, record_json
from vramplan.measure.run import calibrate
from vramplan.measure.store import CalibrationStore
from vramplan.plan import make_plan

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256)
SHAPE = ["--seq", "32", "--batch", "2"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_config(tmp_path) -> str:
    path = tmp_path / "tiny-llama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY))
    return str(path)


@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory) -> CalibrationRecord:
    """One real CPU calibration through the Python API, not saved."""
    path = tmp_path_factory.mktemp("model") / "config.json"
    path.write_text(json.dumps(TINY))
    return calibrate(str(path), make_plan(method="lora", seq=32, batch=2), save=False)


def _oom_record(like: CalibrationRecord) -> CalibrationRecord:
    """What a CUDA run that ran out of memory in backward records (built by hand: no GPU here)."""
    oom = OutOfMemoryRecord(phase="backward", allocated_bytes=23 * 2**30, reserved_bytes=23 * 2**30 + 2**29,
                      message="CUDA out of memory. Tried to allocate 1.95 GiB")
    return like.replace(id=None, device="cuda:0", status="oom", measured=None, oom=oom, by_phase={},
                        by_component={})


# calibrate ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_json_contract_of_a_real_cpu_run(capsys, tiny_config, tmp_path):
    db = tmp_path / "cal.sqlite3"
    code, out, err = run(capsys, "calibrate", "--model", tiny_config, *SHAPE, "--store", str(db), "--json")
    assert code == 0, err
    got = json.loads(out)
    measured = got["measured"]
    assert set(measured["phases"]) == {"load", "forward", "backward", "optimizer"}
    assert measured["source"] == "tracker" and measured["reserved_bytes"] is None  # CPU: no allocator numbers
    assert sum(measured["components"].values()) == measured["peak_bytes"]  # the peak snapshot, attributed

    _, estimate_out, _ = run(capsys, "estimate", "--model", tiny_config, *SHAPE, "--json")
    assert got["estimate"] == json.loads(estimate_out)
    phases = got["estimate"][got["estimate_basis"]]
    for phase, pct in got["error_pct"].items():
        e = max(phases[p] for p in ("forward", "backward", "optimizer")) if phase == "peak" else phases[phase]
        m = measured["peak_bytes"] if phase == "peak" else measured["phases"][phase]
        assert pct == pytest.approx((e - m) / m * 100, abs=1e-3)
    assert set(got["error_pct"]) == {"load", "forward", "backward", "optimizer", "peak"}
    assert got["status"] == "ok" and got["traced"] is False and got["versions"]["torch"] == torch.__version__
    assert [r.id for r in CalibrationStore(db).records()] == [got["id"]]


@pytest.mark.slow
def test_traced_llama_7b_qlora(capsys, tmp_path):
    """The full-size plan, traced: the static components agree with the estimator to the byte."""
    db = tmp_path / "cal.sqlite3"
    code, out, err = run(capsys, "calibrate", "--model", "llama-7b", "--method", "qlora", "--trace", "--store", str(db))
    assert code == 0, err
    assert "Per phase (live tensors)" in out and "peak (backward)" in out and "saved as calibration #1" in out
    (record,) = CalibrationStore(db).records()
    assert record.traced and record.model == "llama-7b" and record.measured.trainable_params == 4_194_304
    assert record.estimate_basis == "traced_phases"  # the tracer cannot see gemm_4bit's CUDA dequantization
    for component in ("quantized_weights", "quant_constants", "double_quant_constants", "lora_adapters",
                      "optimizer_states"):
        assert record.by_component[component].error_pct == 0, component
    assert abs(record.error_pct["peak"]) < 5


def test_paged_states_off_cuda_count_as_optimizer_states():
    """bitsandbytes keeps paged states as ordinary tensors off CUDA: the estimate's traced view holds them."""
    from vramplan.models import spec_from_config

    mid = dict(TINY, hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=8,
               vocab_size=1024)
    record = calibrate(spec_from_config(mid, "mid", "test"), make_plan(method="full", optimizer="paged_adamw_8bit",
                                                                        seq=32), trace=True, save=False)
    assert record.estimate["paged_bytes"] > 0 and record.estimate_basis == "traced_phases"
    assert record.by_component["optimizer_states"].error_pct == 0


def test_out_of_memory_is_recorded_not_raised(capsys, tiny_config, tmp_path, monkeypatch):
    """A CUDA OOM (simulated: measure_step raises what it raises on CUDA) is stored and printed, exit 0."""
    import vramplan.measure.trainer as trainer
    from vramplan.measure.cuda_memory import StepOutOfMemory

    def out_of_memory(*args, **kwargs):
        raise StepOutOfMemory("backward", 3 * 2**30, 4 * 2**30, "CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "measure_step", out_of_memory)
    db = tmp_path / "cal.sqlite3"
    code, out, err = run(capsys, "calibrate", "--model", tiny_config, "--store", str(db))
    assert code == 0, err
    assert "out of memory in the backward phase at 3.00 GiB allocated" in " ".join(out.split())
    (record,) = CalibrationStore(db).records()
    assert record.status == "oom" and record.measured is None and record.oom.reserved_bytes == 4 * 2**30
    assert record.error_pct == {}


@pytest.mark.parametrize("argv, needle", [
    (["--model", "llama-7"], "unknown model 'llama-7'"),
    (["--model", "TINY", "--attn", "flash_attention_2"], "flash_attention_2"),
    (["--model", "TINY", "--device", "tpu"], "'tpu' is not supported"),
    (["--model", "TINY", "--method", "full", "--rank", "8"], "--rank"),
    (["--model", "TINY", "--store", "/dev/null/calibrations.sqlite3"], "cannot open"),
])
def test_bad_input_is_one_line(capsys, tiny_config, tmp_path, argv, needle):
    argv = [tiny_config if a == "TINY" else a for a in argv]
    if "--store" not in argv:
        argv += ["--store", str(tmp_path / "cal.sqlite3")]
    code, out, err = run(capsys, "calibrate", *argv)
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_multi_gpu_plans_are_refused():
    from vramplan.errors import PlanError

    with pytest.raises(PlanError, match="--gpus"):
        calibrate("llama-7b", make_plan(method="lora", gpus=2), trace=True, save=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, tiny_config, tmp_path):
    code, _, err = run(capsys, "calibrate", "--model", tiny_config, "--device", "cuda", "--store", str(tmp_path / "db"))
    assert code == 1 and "cuda" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["calibrate", "--model", "llama-7b", "--steps", "0"],
                                  ["calibrate", "--model", "llama-7b", "--steps", "two"],
                                  ["calibrations", "--limit", "0"]])
def test_bad_numbers_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_measure_packages(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code, _, err = run(capsys, "calibrate", "--model", "llama-7b")
    # the command is right, this machine lacks the measuring stack: exit 1 (vramplan.errors' rule)
    assert code == 1 and err.strip().endswith('pip install "vramplan[measure]"') and len(err.splitlines()) == 1


# The store ----------------------------------------------------------------------------------------------------


def test_store_round_trip(tiny_record, tmp_path):
    store = CalibrationStore(tmp_path / "sub" / "cal.sqlite3")  # folders are created
    saved = store.add(tiny_record)
    again = store.add(_oom_record(tiny_record))
    assert (saved.id, again.id) == (1, 2)
    first, second = store.records()
    assert first == saved and first.to_dict() == {**tiny_record.to_dict(), "id": 1}
    assert second.status == "oom" and second.oom.phase == "backward"
    assert store.records(limit=1) == [second]
    assert store.records(model="no-such-model") == []
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        row = conn.execute("SELECT model, method, device, status, plan, versions FROM calibrations").fetchone()
    assert row[:4] == (tiny_record.model, "lora", "cpu", "ok") and json.loads(row[4])["rank"] == 8
    assert "torch" in json.loads(row[5])


def test_store_location(monkeypatch, tmp_path):
    monkeypatch.delenv("VRAMPLAN_CALIBRATION_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert CalibrationStore().path == tmp_path / "xdg" / "vramplan" / "calibrations.sqlite3"
    monkeypatch.setenv("VRAMPLAN_CALIBRATION_DB", str(tmp_path / "env.db"))
    assert CalibrationStore().path == tmp_path / "env.db"
    assert CalibrationStore(tmp_path / "flag.db").path == tmp_path / "flag.db"


def test_calibrations_lists_and_exports(capsys, tiny_record, tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_CALIBRATION_DB", str(tmp_path / "env.sqlite3"))
    code, out, _ = run(capsys, "calibrations")
    assert code == 0 and "no calibrations in" in out
    store = CalibrationStore()
    store.add(tiny_record)
    store.add(_oom_record(tiny_record))
    code, out, _ = run(capsys, "calibrations")
    assert code == 0 and "oom" in out and "cuda:0" in out and tiny_record.model in out
    code, out, _ = run(capsys, "calibrations", "--json")
    exported = json.loads(out)
    assert [r["id"] for r in exported] == [1, 2] and [r["status"] for r in exported] == ["ok", "oom"]
    assert CalibrationRecord.from_dict(exported[0]) == store.records()[0]
    code, out, _ = run(capsys, "calibrations", "--json", "--limit", "1")
    assert [r["id"] for r in json.loads(out)] == [2]


def test_concurrent_writers(tiny_record, tmp_path):
    """4 processes x 20 inserts into a fresh database (schema creation races too): 80 rows, distinct ids."""
    path = str(tmp_path / "cal.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    workers = [ctx.Process(target=insert_many, args=(path, record_json(tiny_record), 20, start))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    ids = [r.id for r in CalibrationStore(path).records()]
    assert len(ids) == 80 and sorted(set(ids)) == ids


def test_listing_stays_torch_free(tmp_path):
    code = ("import sys; from vramplan.cli import main; "
            f"main(['calibrations', '--store', {str(tmp_path / 'x.db')!r}]); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# Comparisons --------------------------------------------------------------------------------------------------


def test_error_pct_sign_and_zero():
    assert Comparison(estimate_bytes=110, measured_bytes=100).error_pct == 10.0  # estimate too high: positive
    assert Comparison(estimate_bytes=90, measured_bytes=100).error_pct == -10.0
    assert Comparison(estimate_bytes=5, measured_bytes=0).error_pct is None


def test_components_cover_the_measured_peak(tiny_record):
    m = tiny_record.measured
    assert sum(c.measured_bytes for c in tiny_record.by_component.values()) == m.peak_bytes
    assert tiny_record.by_component["lora_adapters"].error_pct == 0
    assert m.top_allocations[0].nbytes == max(a.nbytes for a in m.top_allocations)
