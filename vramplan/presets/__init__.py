"""The built-in model presets: `index.toml` (one table per slug) and one `<slug>.json` config per preset.

`index()` reads the index without the records, for `vramplan models` (which must start as fast as `--help`);
`vramplan.models.presets()` validates the same entries into `Preset` records for everything else. The file is read
through `vramplan.datafiles.read_toml` (parsed once per edit). This module imports neither `typing` nor `pathlib`.
"""

from __future__ import annotations

import os
from collections import namedtuple
from functools import cache

from vramplan.datafiles import read_toml

INDEX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "index.toml")

PresetEntry = namedtuple("PresetEntry", "slug hub_id aliases family params_b source", defaults=((), "", 0.0, ""))
PresetEntry.__doc__ = """One row of index.toml: the fields `vramplan.models.Preset` validates, with the same defaults:
slug (str), hub_id (str), aliases (tuple of str), family (str), params_b (float), source (str)."""


@cache
def read_index() -> dict:
    """slug -> its table in index.toml, as written."""
    return read_toml(INDEX)


def index() -> list[PresetEntry]:
    """Every preset's index row, in file order."""
    return [PresetEntry(slug=slug, hub_id=e["hub_id"], aliases=tuple(e.get("aliases", ())),
                        family=e.get("family", ""), params_b=float(e.get("params_b", 0.0)), source=e.get("source", ""))
            for slug, e in read_index().items()]
