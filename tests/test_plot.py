"""`vramplan plot` writes its figures (matplotlib from the `plot` extra; skipped where it is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")


def test_breakdown_and_timeline_png(tmp_path: Path) -> None:
    from vramplan.cli import main

    out = tmp_path / "fig.png"
    assert main(["plot", "--model", "llama3.2-1b", "--kind", "breakdown", "--kind", "timeline", "--out",
                 str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_output_suffix_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vramplan.cli import main

    assert main(["plot", "--model", "llama3.2-1b", "--kind", "timeline", "--out", str(tmp_path / "x.txt")]) == 2
    assert "give a .png, .svg or .pdf" in capsys.readouterr().err


@pytest.mark.slow
def test_all_four_figures_svg_with_the_gpu_line(tmp_path: Path) -> None:
    from vramplan.cli import main

    out = tmp_path / "fig.svg"
    assert main(["plot", "--model", "llama2-7b", "--gpu", "rtx4090", "--out", str(out)]) == 0
    text = out.read_text()
    assert "rtx4090 usable" in text and "the peak by component" in text and "phase by phase" in text
