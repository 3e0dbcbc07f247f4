"""`vramplan.presets.read_toml`: a TOML data file is parsed once per edit and then read from its marshal cache,
which follows Python's bytecode rules (where it lives, when nothing is written). The oracle is `tomllib.loads` of
the file as it is now."""

from __future__ import annotations

import os
import sys

import pytest

from vramplan import presets

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


@pytest.fixture
def writes_bytecode(monkeypatch, tmp_path):
    """Bytecode writing on (the test environment sets PYTHONDONTWRITEBYTECODE), caches under a temporary prefix."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "pycache"))
    return tmp_path


def no_parse(text: str) -> dict:
    raise AssertionError("parsed again although the file did not change")


def test_second_read_comes_from_the_cache(writes_bytecode, monkeypatch):
    source = writes_bytecode / "data.toml"
    source.write_text('[a]\nx = 1\nname = "one"\nlist = [1.5, 2]\n')
    first = presets.read_toml(str(source))
    assert first == tomllib.loads(source.read_text())
    cached = presets._cache_path(str(source))
    assert cached.startswith(str(writes_bytecode / "pycache")) and os.path.exists(cached)
    monkeypatch.setattr(presets, "_parse", no_parse)
    assert presets.read_toml(str(source)) == first


def test_an_edited_file_is_parsed_again(writes_bytecode):
    source = writes_bytecode / "data.toml"
    source.write_text("x = 1\n")
    assert presets.read_toml(str(source)) == {"x": 1}
    source.write_text("x = 22\n")  # another size
    assert presets.read_toml(str(source)) == {"x": 22}
    source.write_text("x = 33\n")  # the same size, a later modification time
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 1_000_000))
    assert presets.read_toml(str(source)) == {"x": 33}


def test_a_damaged_cache_is_ignored_and_rewritten(writes_bytecode):
    source = writes_bytecode / "data.toml"
    source.write_text("x = 1\n")
    presets.read_toml(str(source))
    cached = presets._cache_path(str(source))
    with open(cached, "wb") as f:
        f.write(b"\x00garbage")
    assert presets.read_toml(str(source)) == {"x": 1}
    assert presets.read_toml(str(source)) == {"x": 1}


def test_nothing_is_written_without_bytecode(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "pycache"))
    source = tmp_path / "data.toml"
    source.write_text("x = 1\n")
    assert presets.read_toml(str(source)) == {"x": 1}
    assert not (tmp_path / "pycache").exists()


def test_a_value_marshal_cannot_hold_leaves_no_cache(writes_bytecode):
    source = writes_bytecode / "data.toml"
    source.write_text("when = 1979-05-27T07:32:00Z\n")  # a datetime: tomllib returns it, marshal cannot store it
    assert presets.read_toml(str(source)) == tomllib.loads(source.read_text())
    folder = os.path.dirname(presets._cache_path(str(source)))
    assert not os.path.exists(folder) or not os.listdir(folder)


def test_the_index_is_the_files_tables():
    with open(presets.INDEX, "rb") as f:
        assert presets.read_index() == tomllib.load(f)
