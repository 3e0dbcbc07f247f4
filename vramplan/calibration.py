"""Calibration: run the micro-trainer on a plan, compare it with the estimate, keep the result.

`calibrate(model, plan)` measures one steady-state training step (vramplan.measure.trainer: real on CPU or
CUDA, or traced with FakeTensors), estimates the same plan, and returns a `CalibrationRecord`: measured and
estimated bytes per phase and per component, with the error `(estimate - measured) / measured * 100`. A real
CUDA step that runs out of memory is a result too (`status="oom"`, with the phase and how far it got).

Records go to an embedded SQLite database, one row per run (`CalibrationStore`). Location: the `path` given,
else `$VRAMPLAN_CALIBRATION_DB`, else `$XDG_CACHE_HOME/vramplan/calibrations.sqlite3` (`~/.cache/...`).
Concurrent runs are safe: WAL journal, a busy timeout, and every write in a `BEGIN IMMEDIATE` transaction.

This module imports no torch; `calibrate` imports the measuring part when it runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, computed_field

from vramplan.errors import InputError, PlanError, VramplanError
from vramplan.plan import TrainingPlan

STEP_PHASES = ("forward", "backward", "optimizer")
PHASES = ("load", *STEP_PHASES)
TOP_ALLOCATIONS = 10
BUSY_TIMEOUT_S = 60.0


class StoreError(VramplanError):
    """The calibration database cannot be opened, read or written."""

    exit_code = 1


# Records ------------------------------------------------------------------------------------------------------


class Comparison(BaseModel):
    """One quantity, estimated and measured, in bytes."""

    model_config = ConfigDict(frozen=True)

    estimate_bytes: int
    measured_bytes: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error_pct(self) -> float | None:
        """(estimate - measured) / measured * 100: positive = the estimate is too high. None if nothing measured."""
        if self.measured_bytes == 0:
            return None
        return 100 * (self.estimate_bytes - self.measured_bytes) / self.measured_bytes


class TopAllocation(BaseModel):
    """A storage live at the measured peak: its name (parameter, buffer, optimizer state) or op and module."""

    model_config = ConfigDict(frozen=True)

    nbytes: int
    what: str
    shape: tuple[int, ...]
    dtype: str
    phase: str


class Measured(BaseModel):
    """What one steady-state step measured. `phases` are the allocator's peaks on a real CUDA run
    (`max_memory_allocated()`, source "cuda_allocator") and the live-tensor tracker's elsewhere; `components`
    and `top_allocations` always come from the tracker's snapshot of its peak."""

    model_config = ConfigDict(frozen=True)

    source: Literal["tracker", "cuda_allocator"]
    phases: dict[str, int]  # load, forward, backward, optimizer
    peak_phase: str
    tracked_phases: dict[str, int]  # the tracker's own, on every device
    after_step_bytes: int
    trainable_params: int
    components: dict[str, int]  # live at the tracker's peak, in the estimator's component keys
    top_allocations: list[TopAllocation]
    reserved_bytes: int | None = None  # CUDA: max_memory_reserved() over the step
    reserved_phases: dict[str, int] | None = None
    cuda_context_bytes: int | None = None
    paged_bytes: int | None = None  # CUDA: paged optimizer states in managed memory

    @computed_field  # type: ignore[prop-decorator]
    @property
    def peak_bytes(self) -> int:
        return max(self.phases[p] for p in STEP_PHASES)


class OutOfMemory(BaseModel):
    """A real CUDA step that ran out of memory: where, and the allocator's peaks in that phase before it."""

    model_config = ConfigDict(frozen=True)

    phase: str
    allocated_bytes: int
    reserved_bytes: int
    message: str


class CalibrationRecord(BaseModel):
    """One calibration run. `estimate` is the object `vramplan estimate --json` prints (kept as JSON so records
    stay readable when the estimator's result type grows); `by_phase` also holds "peak" and, on CUDA,
    "reserved", "paged" and (with a GPU profile) "cuda_context". A tracker measurement (CPU or traced) is
    compared with the estimate's `traced_phases` where it gives them (see `estimate_basis`)."""

    model_config = ConfigDict(frozen=True)

    id: int | None = None
    created_at: str
    model: str
    plan: dict[str, Any]
    device: str
    traced: bool
    steps: int
    status: Literal["ok", "oom"]
    versions: dict[str, str]
    estimate: dict[str, Any]
    estimate_basis: Literal["phases", "traced_phases"] = "phases"  # the estimate's phases compared with
    measured: Measured | None = None
    oom: OutOfMemory | None = None
    by_phase: dict[str, Comparison] = {}
    by_component: dict[str, Comparison] = {}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def error_pct(self) -> dict[str, float | None]:
        return {k: c.error_pct for k, c in self.by_phase.items()}


# Measured side ------------------------------------------------------------------------------------------------


def component_of(alloc: Any, peak_phase: str) -> str:
    """The estimator component a live storage belongs to, by its name (vramplan.measure.trainer.named_state).

    Follows the estimator's definitions: gradients and optimizer-step temporaries are components only at an
    optimizer-phase peak (storages born in backward / in the step); at any other peak everything that is not
    a weight, adapter, optimizer state or the batch (the unnamed storages made outside the phases: input ids
    and labels) is "activations" (saved tensors, gradients so far, temporaries).
    """
    name = alloc.name
    if name.startswith("optimizer"):
        return "optimizer_states"
    if ".quant_state." in name:
        dq = ".quant_state.state2." in name or name.endswith(".quant_state.offset")
        return "double_quant_constants" if dq else "quant_constants"
    if "lora_" in name:
        return "lora_adapters"
    if name:
        return "quantized_weights" if alloc.dtype == "uint8" else "base_weights"
    if alloc.phase == "setup":
        return "batch"
    if peak_phase == "optimizer" and alloc.phase in ("backward", "optimizer"):
        return "gradients" if alloc.phase == "backward" else "optimizer_temporaries"
    return "activations"


def measured_components(snapshot: Iterable[Any], peak_phase: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for alloc in snapshot:
        key = component_of(alloc, peak_phase)
        out[key] = out.get(key, 0) + alloc.nbytes
    return out


def measured_from_step(step: Any) -> Measured:
    """A `vramplan.measure.trainer.MeasuredStep` as a record's `measured` part."""
    tracked = {"load": step.load_bytes, "forward": step.forward_peak_bytes, "backward": step.backward_peak_bytes,
               "optimizer": step.optimizer_peak_bytes}
    cuda = step.allocated_phases is not None
    phases = {p: step.allocated_phases[p] for p in PHASES} if cuda else tracked
    top = [TopAllocation(nbytes=a.nbytes, what=a.name or f"{a.op} in {a.module or '-'}", shape=a.shape,
                         dtype=a.dtype, phase=a.phase) for a in step.peak_snapshot[:TOP_ALLOCATIONS]]
    return Measured(
        source="cuda_allocator" if cuda else "tracker", phases=phases,
        peak_phase=max(STEP_PHASES, key=lambda p: phases[p]), tracked_phases=tracked,
        after_step_bytes=step.after_step_bytes, trainable_params=step.trainable_params,
        components=measured_components(step.peak_snapshot, step.peak_phase), top_allocations=top,
        reserved_bytes=step.reserved_bytes, reserved_phases=step.reserved_phases,
        cuda_context_bytes=step.cuda_context_bytes, paged_bytes=step.paged_bytes,
    )


def estimate_basis(estimate: dict[str, Any], measured: Measured) -> str:
    """Which of the estimate's phase sets a measurement compares with: the tracker cannot see temporaries inside
    bitsandbytes' CUDA kernels, so where the estimator gives `traced_phases` (what the tracer sees), a tracker
    measurement is compared with those; the allocator on a real CUDA run with `phases`."""
    return "traced_phases" if measured.source == "tracker" and estimate.get("traced_phases") else "phases"


def compare(estimate: dict[str, Any], measured: Measured) -> tuple[dict[str, Comparison], dict[str, Comparison]]:
    """(by phase, by component): every phase, the peak, and what the CUDA run measured beyond the allocator.

    A measured component the estimate does not name is compared within "activations", which the estimator
    defines as the rest of the peak. Against `traced_phases` (when its peak is in the same phase): what the
    traced view adds in the optimizer phase, which runs no 4-bit kernel and no dropout (paged states held as
    ordinary tensors, bitsandbytes' maps), counts as optimizer states, and the rest is of the traced peak."""
    phases = estimate[estimate_basis(estimate, measured)]
    peak = max(phases[p] for p in STEP_PHASES)
    pairs: dict[str, tuple[int | None, int | None]] = {p: (phases.get(p), measured.phases[p]) for p in PHASES}
    pairs["peak"] = (peak, measured.peak_bytes)
    if measured.source == "cuda_allocator":
        pairs["reserved"] = (estimate.get("reserved_bytes"), measured.reserved_bytes)
        pairs["paged"] = (estimate.get("paged_bytes"), measured.paged_bytes)
        pairs["cuda_context"] = (estimate.get("cuda_context_bytes"), measured.cuda_context_bytes)
    by_phase = {k: Comparison(estimate_bytes=e, measured_bytes=m) for k, (e, m) in pairs.items()
                if e is not None and m is not None}
    named = dict(estimate["components"])
    traced = phases is not estimate["phases"]
    if traced and max(STEP_PHASES, key=lambda p: phases[p]) == estimate["peak_phase"]:
        named["optimizer_states"] += phases["optimizer"] - estimate["phases"]["optimizer"]
        named["activations"] = peak - sum(v for k, v in named.items() if k != "activations")
    got = dict.fromkeys(named, 0)
    for key, nbytes in measured.components.items():
        got[key if key in named else "activations"] = got.get(key if key in named else "activations", 0) + nbytes
    by_component = {k: Comparison(estimate_bytes=named.get(k, 0), measured_bytes=v) for k, v in got.items()}
    return by_phase, by_component


# The store ----------------------------------------------------------------------------------------------------


def default_store_path() -> Path:
    env = os.environ.get("VRAMPLAN_CALIBRATION_DB")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "vramplan" / "calibrations.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    device TEXT NOT NULL,
    traced INTEGER NOT NULL,
    status TEXT NOT NULL,
    measured_peak_bytes INTEGER,
    estimate_peak_bytes INTEGER NOT NULL,
    peak_error_pct REAL,
    plan TEXT NOT NULL,
    versions TEXT NOT NULL,
    record TEXT NOT NULL
)"""


class CalibrationStore:
    """One SQLite file, one row per calibration run (query columns + the whole record as JSON).

    Every call opens its own connection, so one store object is safe across threads and processes; writers
    wait for each other (busy timeout) instead of failing, and the WAL journal lets readers run alongside.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_store_path()

    def add(self, record: CalibrationRecord) -> CalibrationRecord:
        """Insert the record; returns it with its row id."""
        m = record.measured
        peak = record.by_phase.get("peak")
        estimated = peak.estimate_bytes if peak else record.estimate["peak_bytes"]  # the figure compared with
        row = (record.created_at, record.model, record.plan.get("method", ""), record.device, int(record.traced),
               record.status, m.peak_bytes if m else None, estimated, record.error_pct.get("peak"), json.dumps(record.plan), json.dumps(record.versions),
               record.model_dump_json(exclude={"id"}))
        with self._connect(create=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_SCHEMA)
            cur = conn.execute(
                "INSERT INTO calibrations (created_at, model, method, device, traced, status, measured_peak_bytes,"
                " estimate_peak_bytes, peak_error_pct, plan, versions, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                row)
            conn.execute("COMMIT")
        return record.model_copy(update={"id": cur.lastrowid})

    def records(self, model: str | None = None, limit: int | None = None) -> list[CalibrationRecord]:
        """Stored records, oldest first (the last `limit` of them); an absent database holds none."""
        if not self.path.exists():
            return []
        query = "SELECT id, record FROM calibrations" + (" WHERE model = ?" if model else "") + " ORDER BY id DESC"
        params: tuple = (model,) if model else ()
        if limit is not None:
            query, params = query + " LIMIT ?", (*params, limit)
        with self._connect(create=False) as conn:
            try:
                rows = conn.execute(query, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
        return [_record_of_row(self.path, i, rec) for i, rec in reversed(rows)]

    def add_many(self, records: Iterable[CalibrationRecord]) -> tuple[int, int]:
        """Import records (`calibrations import`): (added, skipped as already stored). A record is already
        stored when one with the same content (all but its row id) is."""
        stored = {r.model_dump_json(exclude={"id"}) for r in self.records()}
        added = skipped = 0
        for record in records:
            text = record.model_dump_json(exclude={"id"})
            if text in stored:
                skipped += 1
                continue
            self.add(record)
            stored.add(text)
            added += 1
        return added, skipped

    def _connect(self, create: bool) -> _Connection:
        return _Connection(self.path, create)


def _record_of_row(path: Path, row_id: int, text: str) -> CalibrationRecord:
    """One stored row as a record; a row that is not a valid record is a one-line StoreError naming it."""
    from pydantic import ValidationError

    try:
        return CalibrationRecord.model_validate_json(text).model_copy(update={"id": row_id})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise StoreError(f"store: {path}: row {row_id} is not a calibration record: "
                         f"{where + ': ' if where else ''}{err['msg']}") from None


def read_jsonl(path: Path) -> list[CalibrationRecord]:
    """Records from a JSON-lines file (`calibrations export`); a bad line is a one-line error naming it."""
    from pydantic import ValidationError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(CalibrationRecord.model_validate_json(line).model_copy(update={"id": None}))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InputError(f"{path}:{number}: not a calibration record: {where + ': ' if where else ''}"
                             f"{err['msg']}") from None
    return out


class _Connection:
    """A connection in autocommit mode (transactions are explicit); sqlite and OS errors become StoreError."""

    def __init__(self, path: Path, create: bool) -> None:
        self.path, self.create = path, create

    def __enter__(self) -> sqlite3.Connection:
        try:
            if self.create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:  # busy while another writer switches it, or a filesystem without WAL
                pass
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"store: cannot open {self.path}: {exc}") from None
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is not None and self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"store: {self.path}: {exc}") from None


# Running one --------------------------------------------------------------------------------------------------


def calibrate(model: str | Any, plan: TrainingPlan, *, device: str = "cpu", trace: bool = False, steps: int = 2,
              gpu: str | None = None, gpu_dirs: Sequence[Path] = (),
              store: str | Path | CalibrationStore | None = None, save: bool = True,
              seed: int = 0, on_progress: Callable[[int, int, str], None] | None = None) -> CalibrationRecord:
    """Measure one step of `plan` on `model` (a `--model` string or a ModelSpec), compare with the estimate,
    and (with `save`) add the record to `store` (a path, a CalibrationStore, or None for the default).

    `gpu` names a GPU profile whose CUDA context the estimate adds. Raises VramplanError subclasses for bad
    input and what cannot be measured; a CUDA out-of-memory is returned as a record with status "oom".
    """
    from vramplan.api import allocator_reserve_bytes, estimate
    from vramplan.models import resolve_model

    _check_single_process(plan)
    spec = resolve_model(model) if isinstance(model, str) else model
    result = estimate(spec, plan, gpu=gpu, gpu_dirs=gpu_dirs)
    cuda = device.startswith("cuda") and not trace
    if cuda and result.allocator_reserve_bytes is None:  # compare the reserved peak with the reserve model
        result = result.model_copy(update={"allocator_reserve_bytes": allocator_reserve_bytes(result.peak_bytes)})
    target = store if isinstance(store, CalibrationStore) else CalibrationStore(store)
    if save:  # a store that cannot be written fails now, not after the measurement
        with target._connect(create=True):
            pass
    measured, oom = _measure(spec.config, plan, device, trace, steps, seed, on_progress)
    estimate_json = result.model_dump(mode="json")
    by_phase, by_component = compare(estimate_json, measured) if measured else ({}, {})
    record = CalibrationRecord(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=spec.name,
        plan=plan.model_dump(mode="json"), device=device, traced=trace, steps=steps,
        status="oom" if oom else "ok", versions=library_versions(device if cuda else None),
        estimate=estimate_json, estimate_basis=estimate_basis(estimate_json, measured) if measured else "phases",
        measured=measured, oom=oom, by_phase=by_phase,
        by_component=by_component,
    )
    return target.add(record) if save else record


def _check_single_process(plan: TrainingPlan) -> None:
    """The micro-trainer is one process on one device with uint8 4-bit storage: other plans have nothing to
    compare with."""
    multi = [flag for flag, value, single in (("--gpus", getattr(plan, "gpus", 1), (1,)),
                                              ("--sharding", getattr(plan, "sharding", None), (None, "none")),
                                              ("--offload", getattr(plan, "offload", "none"), ("none",)))
             if value not in single]
    if multi:
        raise PlanError(f"{', '.join(multi)}: calibrate measures one process on one device; leave them out")
    if getattr(plan, "quant_storage", None) not in (None, "uint8"):  # measure/build.py: bnb_4bit_quant_storage
        raise PlanError("--quant-storage: the micro-trainer stores 4-bit weights in uint8 (bitsandbytes' default)")


def _measure(config: dict, plan: TrainingPlan, device: str, trace: bool, steps: int, seed: int,
             on_progress: Callable[[int, int, str], None] | None) -> tuple[Measured | None, OutOfMemory | None]:
    from vramplan.measure.cuda_memory import StepOutOfMemory
    from vramplan.measure.trainer import measure_step

    try:
        step = measure_step(config, plan, device=device, trace=trace, steps=steps, seed=seed,
                            on_progress=on_progress)
    except StepOutOfMemory as exc:
        oom = OutOfMemory(phase=exc.phase, allocated_bytes=exc.allocated_bytes, reserved_bytes=exc.reserved_bytes,
                          message=exc.message)
    else:
        return measured_from_step(step), None
    _release_cuda_memory()  # the failed step's tensors died with the exception's traceback
    return None, oom


def _release_cuda_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def library_versions(cuda_device: str | None = None) -> dict[str, str]:
    """Python, vramplan and the measuring stack's versions; on CUDA also the CUDA runtime and the GPU's name."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from vramplan import __version__

    out = {"python": platform.python_version(), "vramplan": __version__}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    if cuda_device is not None:
        import torch

        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(torch.device(cuda_device))
    return out
