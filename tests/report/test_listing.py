"""`vramplan models` reads the preset index without pydantic; what it lists is what the validated presets hold."""

from __future__ import annotations

import io
import subprocess
import sys

from vramplan.models import presets
from vramplan.presets import index
from vramplan.report.listing import render_models, write_table


def test_the_index_read_for_the_listing_is_the_validated_presets():
    validated = presets()
    rows = index()
    assert [r.slug for r in rows] == list(validated)
    for r in rows:
        p = validated[r.slug]
        assert (r.hub_id, list(r.aliases), r.family, r.params_b, r.source) == (p.hub_id, p.aliases, p.family,
                                                                                 p.params_b, p.source)


def test_models_table_lists_every_preset_in_columns():
    out = io.StringIO()
    render_models(out, index())
    lines = out.getvalue().splitlines()
    assert lines[0] == "Model presets" and lines[1].split()[:3] == ["preset", "hub", "id"]
    assert len(lines) == 3 + len(index())
    assert {line.split()[0] for line in lines[3:]} == set(presets())


def test_write_table_pads_columns_and_right_aligns_numbers():
    out = io.StringIO()
    write_table(out, "t", ("name", "size"), [("a", "1"), ("bbb", "22")], right=("size",))
    assert out.getvalue().splitlines()[1:] == ["name  size", "----  ----", "a        1", "bbb     22"]


def test_models_imports_neither_pydantic_nor_rich():
    """issue 10: `vramplan models` starts as light as `--help` (its timing: benchmarks/cli_startup.py)."""
    code = ("import sys, contextlib, io\nfrom vramplan.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['models'])\n"
            "heavy = [m for m in ('pydantic', 'rich') if m in sys.modules]\nassert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
