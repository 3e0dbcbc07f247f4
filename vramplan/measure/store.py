"""The calibration store: an embedded SQLite database, one row per run (`CalibrationStore`).

Location: the `path` given, else `$VRAMPLAN_CALIBRATION_DB`, else `$XDG_CACHE_HOME/vramplan/calibrations.sqlite3`
(`~/.cache/...`). Concurrent runs are safe: WAL journal, a busy timeout, and every write in a `BEGIN IMMEDIATE`
transaction. Also `read_jsonl` for the files `vramplan calibrations --json` exports. No torch.

sqlite3 and the record classes load at the first read of an existing store or the first write: `estimate --gpu`
asks the default store on every run, and most machines have none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vramplan.errors import InputError, StoreError

if TYPE_CHECKING:
    import sqlite3

    from vramplan.measure.records import CalibrationRecord

BUSY_TIMEOUT_S = 60.0


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
        from vramplan.measure.records import record_json

        m = record.measured
        peak = record.by_phase.get("peak")
        estimated = peak.estimate_bytes if peak else record.estimate["peak_bytes"]  # the figure compared with
        row = (record.created_at, record.model, record.plan.get("method", ""), record.device, int(record.traced),
               record.status, m.peak_bytes if m else None, estimated, record.error_pct.get("peak"),
               json.dumps(record.plan), json.dumps(record.versions),
               record_json(record))
        with self._connect(create=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_SCHEMA)
            cur = conn.execute(
                "INSERT INTO calibrations (created_at, model, method, device, traced, status, measured_peak_bytes,"
                " estimate_peak_bytes, peak_error_pct, plan, versions, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                row)
            conn.execute("COMMIT")
        return record.replace(id=cur.lastrowid)

    def records(self, model: str | None = None, limit: int | None = None) -> list[CalibrationRecord]:
        """Stored records, oldest first (the last `limit` of them); an absent database holds none."""
        if not self.path.exists():
            return []
        import sqlite3

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
        from vramplan.measure.records import record_json

        stored = {record_json(r) for r in self.records()}
        added = skipped = 0
        for record in records:
            text = record_json(record)
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
    try:
        return parse_record(text, row_id)
    except InputError as exc:
        raise StoreError(f"store: {path}: row {row_id} is not a calibration record: {exc}") from None


def read_jsonl(path: Path) -> list[CalibrationRecord]:
    """Records from a JSON-lines file (`calibrations export`); a bad line is a one-line error naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(parse_record(line, None))
        except InputError as exc:
            raise InputError(f"{path}:{number}: not a calibration record: {exc}") from None
    return out


def parse_record(text: str, row_id: int | None) -> CalibrationRecord:
    """A record from its JSON text (`record_json`'s, or pydantic's in stores written before), with this row id
    (a text's own "id" is ignored); raises an InputError of one line: the JSON error or `field: problem`."""
    from vramplan.measure.records import CalibrationRecord

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, dict):
        data = {**data, "id": row_id}
    return CalibrationRecord.from_dict(data)


class _Connection:
    """A connection in autocommit mode (transactions are explicit); sqlite and OS errors become StoreError."""

    def __init__(self, path: Path, create: bool) -> None:
        self.path, self.create = path, create

    def __enter__(self) -> sqlite3.Connection:
        import sqlite3

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
        import sqlite3

        self.conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"store: {self.path}: {exc}") from None
