"""A writer process for tests/test_calibrate.py's concurrency test: imports the store only (no torch), so the
spawned processes start in a fraction of a second."""

import json
from typing import Any

from vramplan.measure.records import CalibrationRecord
from vramplan.measure.store import CalibrationStore


def insert_many(path: str, record_json: str, n: int, start: Any) -> None:  # start: a multiprocessing Barrier
    store = CalibrationStore(path)
    record = CalibrationRecord.from_dict(json.loads(record_json))
    start.wait()  # all writers begin together, on a database none of them has created yet
    for _ in range(n):
        store.add(record)
