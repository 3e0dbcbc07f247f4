"""Learning from stored runs: the reserve and CUDA context of stored CUDA runs on the same GPU correct an
estimate's device figures, never its peak; export/import as JSON lines; a broken store row is one line.

The stored runs here are records as `vramplan calibrate --device cuda` writes them, with the allocator's
statistics set to chosen figures: the layer under test is arithmetic on measurements, so its oracle is those
figures (what torch.cuda.max_memory_reserved/max_memory_allocated and the context probe would have reported).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from vramplan.api import estimate
from vramplan.cli import main
from vramplan.hardware import resolve_gpu
from vramplan.measure.learning import correct
from vramplan.measure.records import CalibrationRecord, Measured, record_json
from vramplan.measure.store import CalibrationStore, read_jsonl
from vramplan.plan import make_plan

GPU = "NVIDIA GeForce RTX 4090"
MiB = 2**20


@cache
def _estimate(seq: int):
    return estimate("qwen2.5-0.5b", make_plan(method="lora", seq=seq, batch=1), gpu="rtx4090")


def cuda_record(seq: int = 256, *, allocated: int | None = None, reserve: int = 300 * MiB,
                context: int | None = 500 * MiB, gpu: str = GPU, torch: str = "2.13.0",
                traced: bool = False) -> CalibrationRecord:
    """A stored CUDA run of qwen2.5-0.5b LoRA at `seq`: allocated peak, reserved = peak + reserve, context."""
    est = _estimate(seq)
    peak = allocated if allocated is not None else est.peak_bytes
    phases = {"load": peak // 2, "forward": peak - 1, "backward": peak, "optimizer": peak // 2}
    measured = Measured(source="cuda_allocator", phases=phases, peak_phase="backward", tracked_phases=phases,
                        after_step_bytes=peak // 2, trainable_params=1, components={}, top_allocations=[],
                        reserved_bytes=peak + reserve, cuda_context_bytes=context)
    return CalibrationRecord(created_at="2026-11-30T08:00:00+00:00", model=est.model,
                             plan=est.plan.to_dict(),
                             device="cuda:0", traced=traced, steps=2, status="ok",
                             versions={"gpu": gpu, "torch": torch, "cuda": "12.8"},
                             estimate=est.to_dict(), measured=measured)


def _profile():
    return resolve_gpu("rtx4090")


def test_context_is_the_median_of_the_runs_on_this_gpu():
    est = _estimate(512)
    records = [cuda_record(context=c * MiB) for c in (480, 500, 900)]
    fixed, words = correct(est, records, _profile())
    assert fixed.cuda_context_bytes == 500 * MiB
    assert "CUDA context from 3 runs" in words and fixed.peak_bytes == est.peak_bytes


def test_runs_of_this_plan_give_their_reserve_and_show_the_peak_residual():
    est = _estimate(256)
    records = [cuda_record(256, reserve=40 * MiB, allocated=int(est.peak_bytes * 1.02)),
               cuda_record(256, reserve=60 * MiB)]
    fixed, words = correct(est, records, _profile())
    assert fixed.allocator_reserve_bytes == 60 * MiB  # the largest measured, below the model's own
    assert fixed.allocator_reserve_bytes < est.allocator_reserve_bytes
    assert fixed.peak_bytes == est.peak_bytes and fixed.phases == est.phases
    assert "reserve from 2 runs of this plan on this GPU" in words and "+2.0% vs this estimate" in words


def test_runs_of_other_plans_only_raise_the_reserve():
    est = _estimate(512)
    small = [cuda_record(256, reserve=r) for r in (1, 2, 3)]  # a tiny reserve per byte: the model's stays
    fixed, _ = correct(est, small, _profile())
    assert fixed.allocator_reserve_bytes == est.allocator_reserve_bytes
    peak256 = _estimate(256).peak_bytes
    large = [cuda_record(256, reserve=peak256 // 2)]  # half the peak again: 0.5 x this peak
    fixed, words = correct(est, large, _profile())
    assert fixed.allocator_reserve_bytes == int(0.5 * est.peak_bytes) > est.allocator_reserve_bytes
    assert "reserve from 1 run on this GPU" in words
    assert fixed.total_gpu_bytes - est.total_gpu_bytes == fixed.allocator_reserve_bytes - est.allocator_reserve_bytes \
        + fixed.cuda_context_bytes - est.cuda_context_bytes


def test_other_gpus_traced_runs_and_other_builds_are_left_out():
    est = _estimate(256)
    assert correct(est, [cuda_record(gpu="NVIDIA A100-SXM4-80GB"), cuda_record(traced=True)], _profile()) == (est, None)
    mixed = [cuda_record(context=400 * MiB, torch="2.12.0"), cuda_record(context=700 * MiB)]
    fixed, _ = correct(est, mixed, _profile(), {"torch": "2.13.0"})
    assert fixed.cuda_context_bytes == 700 * MiB  # this torch build's run
    fixed, _ = correct(est, mixed, _profile(), {"torch": "2.11.0"})
    assert fixed.cuda_context_bytes == 550 * MiB  # none of this build: all runs on this GPU


def _store(tmp_path, records) -> str:
    path = tmp_path / "cal.sqlite3"
    store = CalibrationStore(path)
    for r in records:
        store.add(r)
    return str(path)


def test_check_says_so_and_no_calibration_turns_it_off(capsys, tmp_path):
    config = tmp_path / "a.yml"
    config.write_text("base_model: Qwen/Qwen2.5-0.5B\nadapter: lora\nsequence_len: 256\nbf16: true\n")
    store = _store(tmp_path, [cuda_record(context=c * MiB) for c in (450, 460, 470, 480, 490, 500, 510)])
    assert main(["check", str(config), "--gpu", "rtx4090", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "calibration (NVIDIA GeForce RTX 4090): " in out and "CUDA context from 7 runs: 0.47 GiB" in out
    assert main(["check", str(config), "--gpu", "rtx4090", "--store", store, "--no-calibration"]) == 0
    assert "calibration" not in capsys.readouterr().out


def test_export_import_round_trip(capsys, tmp_path):
    source = _store(tmp_path, [cuda_record(256), cuda_record(512)])
    lines = tmp_path / "team.jsonl"
    assert main(["calibrations", "export", str(lines), "--store", source]) == 0
    assert len(lines.read_text().splitlines()) == 2
    target = str(tmp_path / "other.sqlite3")
    assert main(["calibrations", "import", str(lines), "--store", target]) == 0
    assert main(["calibrations", "import", str(lines), "--store", target]) == 0
    out = capsys.readouterr().out
    assert "imported 2 records" in out and "imported 0 records" in out and "(2 already there)" in out
    assert [r.replace(id=None) for r in CalibrationStore(target).records()] == \
        [r.replace(id=None) for r in CalibrationStore(source).records()]
    assert main(["calibrations", "export", "--store", source]) == 0  # stdout
    assert capsys.readouterr().out == lines.read_text()


def test_a_broken_row_or_line_is_one_line(capsys, tmp_path):
    path = _store(tmp_path, [cuda_record()])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE calibrations SET record = '{\"model\": 1}'")
    assert main(["calibrations", "--store", path]) == 1
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "row 1 is not a calibration record" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(record_json(cuda_record()) + "\n{not json\n")
    assert main(["calibrations", "import", str(bad), "--store", str(tmp_path / "x.sqlite3")]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "bad.jsonl:2: not a calibration record" in err


PYDANTIC_ROW = Path(__file__).parent / "golden" / "calibration_row_pydantic.jsonl"  # written by vramplan <= b77da3f


def test_rows_written_by_pydantic_still_read(capsys, tmp_path):
    """A row and an export line as the pydantic records wrote them (computed fields included, floats in serde's
    spelling) read back; importing the same record into a store holding that row skips it as already there."""
    text = PYDANTIC_ROW.read_text(encoding="utf-8").strip()
    path = tmp_path / "old.sqlite3"
    CalibrationStore(path).add(CalibrationRecord.from_dict(json.loads(text)))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE calibrations SET record = ?", (text[:-1] + ',"field_of_a_later_version":1}',))
    (old,) = CalibrationStore(path).records()
    assert old.id == 1 and old.measured.top_allocations[0].shape == (4, 8) and old.error_pct["peak"] == 0.25
    assert old.versions["gpu"].endswith("é") and old.estimate["speed"] == 1e-05
    assert read_jsonl(PYDANTIC_ROW) == [old.replace(id=None)]
    assert CalibrationStore(path).add_many(read_jsonl(PYDANTIC_ROW)) == (0, 1)
    assert json.loads(record_json(old)) == json.loads(text)  # the same JSON, read as JSON


def test_api_estimate_takes_a_store(tmp_path):
    store = _store(tmp_path, [cuda_record(context=999 * MiB)])
    plan = make_plan(method="lora", seq=256, batch=1)
    assert estimate("qwen2.5-0.5b", plan, gpu="rtx4090", calibration=store).cuda_context_bytes == 999 * MiB
    assert estimate("qwen2.5-0.5b", plan, gpu="rtx4090").cuda_context_bytes != 999 * MiB


def test_estimate_gpu_without_a_store_loads_no_store_code(tmp_path):
    """Most machines have no store: `estimate --gpu` then asks for none of sqlite3, statistics or the records."""
    code = ("import sys; from vramplan.cli import main; main(['estimate', '--model', 'qwen2.5-0.5b', '--gpu', "
            "'rtx4090', '--json']); loaded = [m for m in ('sqlite3', 'statistics', 'vramplan.measure.records') "
            "if m in sys.modules]; assert not loaded, loaded")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("VRAMPLAN_CALIBRATION_DB", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv", [["calibrations", "import"], ["calibrations", "list", "x.jsonl"]])
def test_calibrations_usage(capsys, argv, tmp_path):
    assert main([*argv, "--store", str(tmp_path / "s.sqlite3")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_estimate_command_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_CALIBRATION_DB", _store(tmp_path, [cuda_record(context=600 * MiB)]))
    argv = ["estimate", "--model", "qwen2.5-0.5b", "--method", "lora", "--seq", "256", "--gpu", "rtx4090"]
    assert main(argv) == 0
    assert "CUDA context from 1 run: 0.59 GiB" in capsys.readouterr().out
    assert main([*argv, "--no-calibration"]) == 0
    assert "calibration" not in capsys.readouterr().out


def test_suggest_uses_the_same_stored_runs_as_estimate(capsys, tmp_path, monkeypatch):
    """suggest's plans carry the learnt context and reserve, exactly what estimate --gpu shows for that plan."""
    monkeypatch.setenv("VRAMPLAN_CALIBRATION_DB", _store(tmp_path, [cuda_record(context=600 * MiB)]))
    argv = ["suggest", "--model", "qwen2.5-0.5b", "--gpu", "rtx4090", "--method", "lora", "--seq", "256",
            "--top", "1", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    import json

    first = json.loads(captured.out)["plans"][0]
    assert "CUDA context from 1 run: 0.59 GiB" in captured.err
    plan = make_plan(**first["plan"])
    learned = estimate("qwen2.5-0.5b", plan, gpu="rtx4090", calibration=True)
    assert learned.cuda_context_bytes == 600 * MiB
    assert first["total_gpu_bytes"] == learned.total_gpu_bytes
    assert main([*argv, "--no-calibration"]) == 0
    plain = json.loads(capsys.readouterr().out)["plans"][0]
    plain_estimate = estimate("qwen2.5-0.5b", make_plan(**plain["plan"]), gpu="rtx4090")
    assert plain["total_gpu_bytes"] == plain_estimate.total_gpu_bytes
