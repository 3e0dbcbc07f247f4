"""The built-in model presets: `index.toml` (one table per slug) and one `<slug>.json` config per preset.

`index()` reads the index without pydantic, for `vramplan models` (which must start as fast as `--help`);
`vramplan.models.presets()` validates the same entries into `Preset` models for everything else.

The index is parsed as Python treats a module's source: once per edit. `tomllib`'s import (its regular
expressions, `datetime`) and its pure-Python parse of this file take about 10 ms, most of what `vramplan models`
would add to a bare interpreter; the parsed tables are kept as a `marshal` file where Python keeps bytecode
(`__pycache__` beside the file, or under `sys.pycache_prefix`; nothing is written when bytecode is not:
`PYTHONDONTWRITEBYTECODE`), valid while the file's size and modification time are those it was made from.
This module imports neither `typing` nor `pathlib` (3 ms each, more than the rest of the listing).
"""

from __future__ import annotations

import marshal
import os
import sys
from collections import namedtuple
from functools import cache

INDEX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "index.toml")

PresetEntry = namedtuple("PresetEntry", "slug hub_id aliases family params_b source", defaults=((), "", 0.0, ""))
PresetEntry.__doc__ = """One row of index.toml: the fields `vramplan.models.Preset` validates, with the same defaults:
slug (str), hub_id (str), aliases (tuple of str), family (str), params_b (float), source (str)."""


def _cache_path(source: str) -> str:
    """Where the parsed form of `source` is kept: importlib's rule for a module's bytecode (`cache_from_source`)."""
    folder, name = os.path.split(source)
    if sys.pycache_prefix:
        folder = os.path.join(sys.pycache_prefix, os.path.splitdrive(folder)[1].lstrip(os.sep))
    else:
        folder = os.path.join(folder, "__pycache__")
    return os.path.join(folder, f"{name}.{sys.implementation.cache_tag}.marshal")


def _parse(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    return tomllib.loads(text)


def read_toml(source: str) -> dict:
    """`source`'s tables as `tomllib.loads` gives them, from the marshal cache when the file has not changed since."""
    stat = os.stat(source)
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _cache_path(source)
    try:
        with open(cached, "rb") as f:
            made_from, tables = marshal.load(f)
        if made_from == key:
            return tables
    except (OSError, EOFError, ValueError, TypeError):  # absent, unreadable or not ours: parse the source
        pass
    with open(source, encoding="utf-8") as f:
        tables = _parse(f.read())
    if not sys.dont_write_bytecode:
        _keep(cached, (key, tables))
    return tables


def _keep(cached: str, payload: tuple) -> None:
    """Write the cache file, renamed into place so a reader never sees half of one; on any failure (a read-only
    install, a value marshal cannot hold) nothing is kept and the source is parsed again next time."""
    partial = f"{cached}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with open(partial, "wb") as f:
            marshal.dump(payload, f)
        os.replace(partial, cached)
    except (OSError, ValueError):
        try:
            os.remove(partial)
        except OSError:
            pass


@cache
def read_index() -> dict:
    """slug -> its table in index.toml, as written."""
    return read_toml(INDEX)


def index() -> list[PresetEntry]:
    """Every preset's index row, in file order."""
    return [PresetEntry(slug=slug, hub_id=e["hub_id"], aliases=tuple(e.get("aliases", ())),
                        family=e.get("family", ""), params_b=float(e.get("params_b", 0.0)), source=e.get("source", ""))
            for slug, e in read_index().items()]
