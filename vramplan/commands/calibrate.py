"""`vramplan calibrate` (measure a plan, compare it with the estimate, store the record) and
`vramplan calibrations` (list or export the stored records).

Importing this module is cheap: torch and the measuring part load inside `run_calibrate`.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from vramplan.errors import InputError, MissingPackagesError

if TYPE_CHECKING:
    pass

MEASURE_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_store_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="PATH", help="calibration database (default $VRAMPLAN_CALIBRATION_DB, "
                   "else $XDG_CACHE_HOME/vramplan/calibrations.sqlite3)")


# calibrate ----------------------------------------------------------------------------------------------------


def add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    from vramplan.commands.plan_flags import add_plan_arguments

    p = sub.add_parser("calibrate",
                       description="Run one real (or traced) fine-tuning step of a plan, print measured vs "
                       "estimated memory per phase and component, and save the record.")
    p.add_argument("--model", help="preset name, config.json path, model folder or HF hub id (or from --config)")
    add_plan_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--trace", action="store_true",
                   help="run under FakeTensorMode: exact tensor bytes of full-size models in seconds, no memory")
    p.add_argument("--steps", type=_positive_int, default=2, help="training steps; the last is measured (default 2)")
    p.add_argument("--gpu", help="GPU profile whose CUDA context the estimate adds (compared on --device cuda)")
    p.add_argument("--gpu-dir", action="append", metavar="DIR",
                   help="extra folder of GPU profile .toml files (repeatable; also $VRAMPLAN_GPU_DIR)")
    _add_store_argument(p)
    p.add_argument("--no-save", action="store_true", help="do not add the record to the store")
    p.add_argument("--json", action="store_true", help="print the record as one JSON object")
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    _require_measure_packages()
    _quiet_libraries()
    from vramplan import report
    from vramplan.commands.plan_flags import console as _console
    from vramplan.commands.plan_flags import gpu_dirs as _gpu_dirs
    from vramplan.commands.plan_flags import plan_from_args
    from vramplan.measure.run import calibrate
    from vramplan.measure.store import CalibrationStore

    plan = plan_from_args(args)
    store = CalibrationStore(args.store)
    with _progress(f"{args.model} on {args.device}{' (traced)' if args.trace else ''}") as on_progress:
        record = calibrate(args.model, plan, device=args.device, trace=args.trace, steps=args.steps, gpu=args.gpu,
                           gpu_dirs=_gpu_dirs(args), store=store, save=not args.no_save, on_progress=on_progress)
    if args.json:
        report.print_json(record.to_dict())
    else:
        console = _console(args)
        report.render_calibration(console, record)
        console.print(f"saved as calibration #{record.id} in {store.path}" if record.id else "not saved (--no-save)")
    return 0


def _require_measure_packages() -> None:
    import importlib.util

    missing = [m for m in MEASURE_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingPackagesError(f"measuring needs {', '.join(missing)}: pip install \"vramplan[measure]\"")


def _quiet_libraries() -> None:
    """The CLI's stderr is for vramplan: hide the stack's import-time warnings (CPU kernel fallbacks, ...)."""
    import logging

    for name in ("bitsandbytes", "transformers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int, str], None] | None]:
    """A progress bar on stderr while measuring (only on a terminal: pipes and --json stdout stay clean)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"measuring {what}", total=None)

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=f"measuring {what}: {label}")

        yield update


# calibrations -------------------------------------------------------------------------------------------------


def add_calibrations_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrations",
                       description="List the calibration records (or print them as JSON); export them as JSON "
                       "lines to share with a team, or import such a file (records already stored are skipped).")
    p.add_argument("action", nargs="?", choices=("list", "export", "import"), default="list",
                   help="list (default), export [FILE] (JSON lines; stdout without FILE), import FILE")
    p.add_argument("file", nargs="?", help="the JSON-lines file to export to or import from")
    _add_store_argument(p)
    p.add_argument("--model", help="only records of this model (as recorded, e.g. llama-7b)")
    p.add_argument("--limit", type=_positive_int, help="only the most recent N records")
    p.add_argument("--json", action="store_true", help="list: the full records as a JSON list")
    p.set_defaults(run=run_calibrations)


def run_calibrations(args: argparse.Namespace) -> int:
    from vramplan import report
    from vramplan.commands.plan_flags import console as _console
    from vramplan.measure.store import CalibrationStore

    store = CalibrationStore(args.store)
    if args.action == "import":
        return _import(args, store)
    if args.file and args.action != "export":
        raise InputError(f"{args.file}: a file goes with export or import, not list")
    records = store.records(model=args.model, limit=args.limit)
    if args.action == "export":
        return _export(args, records)
    if args.json:
        report.print_json([r.to_dict() for r in records])
    elif not records:
        _console(args).print(f"no calibrations in {store.path}")
    else:
        report.render_calibrations(_console(args), records, str(store.path))
    return 0


def _export(args: argparse.Namespace, records: Sequence[Any]) -> int:
    """One record per line, without its row id (ids belong to a store)."""
    import sys
    from pathlib import Path

    from vramplan.measure.records import record_json

    text = "".join(record_json(r) + "\n" for r in records)
    if args.file:
        try:
            Path(args.file).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{args.file}: cannot write: {exc.strerror or exc}") from None
        print(f"exported {len(records)} record{'s' * (len(records) != 1)} to {args.file}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _import(args: argparse.Namespace, store: Any) -> int:
    from pathlib import Path

    from vramplan.commands.plan_flags import console as _console
    from vramplan.measure.store import read_jsonl

    if not args.file:
        raise InputError("calibrations import: give the JSON-lines FILE to import")
    added, skipped = store.add_many(read_jsonl(Path(args.file)))
    _console(args).print(f"imported {added} record{'s' * (added != 1)} into {store.path}"
                         + (f" ({skipped} already there)" if skipped else ""), highlight=False)
    return 0
