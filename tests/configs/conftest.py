"""Helpers: write a config text to a temporary file and read it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vramplan.configs import read_config


@pytest.fixture
def read(tmp_path: Path):
    def _read(text: str, name: str = "config.yml", fmt: str | None = None):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return read_config(path, fmt)

    return _read
