"""The built-in model presets: `index.toml` (one table per slug) and one `<slug>.json` config per preset.

`index()` reads the index without pydantic, for `vramplan models` (which must start as fast as `--help`);
`vramplan.models.presets()` validates the same entries into `Preset` models for everything else.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

INDEX = Path(__file__).with_name("index.toml")


class PresetEntry(NamedTuple):
    """One row of index.toml: the fields `vramplan.models.Preset` validates, with the same defaults (a NamedTuple,
    not a dataclass: `dataclasses` imports `inspect`, a third of `--help`'s own start-up)."""

    slug: str
    hub_id: str
    aliases: tuple[str, ...] = ()
    family: str = ""
    params_b: float = 0.0
    source: str = ""


@cache
def read_index() -> dict[str, dict[str, Any]]:
    """slug -> its table in index.toml, as written."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    return tomllib.loads(INDEX.read_text(encoding="utf-8"))


def index() -> list[PresetEntry]:
    """Every preset's index row, in file order."""
    return [PresetEntry(slug=slug, hub_id=e["hub_id"], aliases=tuple(e.get("aliases", ())),
                        family=e.get("family", ""), params_b=float(e.get("params_b", 0.0)), source=e.get("source", ""))
            for slug, e in read_index().items()]
