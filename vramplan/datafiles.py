"""vramplan's TOML data files (the model index, the GPU profiles), parsed once per edit.

`tomllib`'s import (its regular expressions, `datetime`) and its pure-Python parse of the model index take about
10 ms on 2 cores, as long as the rest of `vramplan models` above a bare interpreter (issue 10: the listings start
as fast as `--help`). So `read_toml` keeps each file's tables in vramplan's cache folder as a `marshal` file (the
format of Python's bytecode: no import, about 0.1 ms to load), valid while the file's path, size and modification
time are those it was made from and the interpreter's bytecode tag is the same. A cache that cannot be written (a
read-only home) or read (damaged) only costs the parse. This module imports neither `typing` nor `pathlib`
(about 3 ms each).

The cache folder: `$VRAMPLAN_CACHE_DIR`, else `$XDG_CACHE_HOME/vramplan`, else `~/.cache/vramplan` (also where
`vramplan.measure.meta_inventory` keeps derived specs), here under `toml/`. `builtin_gpu_dir` is where the built-in
GPU profiles are.
"""

from __future__ import annotations

import marshal
import os
import sys
import zlib


def cache_dir() -> str:
    """$VRAMPLAN_CACHE_DIR, else $XDG_CACHE_HOME/vramplan, else ~/.cache/vramplan."""
    if os.environ.get("VRAMPLAN_CACHE_DIR"):
        return os.environ["VRAMPLAN_CACHE_DIR"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "vramplan")


def cache_path(source: str) -> str:
    """The marshal file kept for `source` (an absolute path): its name, a checksum of its path, the bytecode tag."""
    name = os.path.basename(source)
    return os.path.join(cache_dir(), "toml", f"{name}.{zlib.crc32(source.encode()):08x}."
                        f"{sys.implementation.cache_tag}.marshal")


def _parse(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    return tomllib.loads(text)


def read_toml(source: str) -> dict:
    """`source`'s tables as `tomllib.loads` gives them; from the cache when the file has not changed since."""
    source = os.path.abspath(source)
    stat = os.stat(source)
    key = (source, stat.st_size, stat.st_mtime_ns)
    cached = cache_path(source)
    try:
        with open(cached, "rb") as f:
            made_from, tables = marshal.load(f)
        if made_from == key:
            return tables
    except (OSError, EOFError, ValueError, TypeError):  # absent, unreadable or not ours: parse the source
        pass
    with open(source, encoding="utf-8") as f:
        tables = _parse(f.read())
    _keep(cached, (key, tables))
    return tables


def _keep(cached: str, payload: tuple) -> None:
    """Write the cache file, renamed into place so a reader never sees half of one; on any failure (a read-only
    folder, a value marshal cannot hold: a TOML date) nothing is kept and the source is parsed again next time."""
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


def builtin_gpu_dir() -> str:
    """The built-in GPU profiles' folder: the installed package-data folder `vramplan.hardware_profiles` (its
    `__init__.py` makes it importable), else, in a source checkout run in place, the repository's
    `hardware_profiles/`. Found without importlib.resources (its zipfile and tempfile imports: ~14 ms)."""
    try:
        module = __import__("vramplan.hardware_profiles", fromlist=["_"])
        return os.path.dirname(os.path.abspath(module.__file__))
    except ModuleNotFoundError:
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hardware_profiles")
