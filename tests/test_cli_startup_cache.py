"""`vramplan.datafiles.read_toml`: a TOML data file is parsed once per edit and then read from its marshal copy in
vramplan's cache folder. The oracle is `tomllib.loads` of the file as it is now."""

from __future__ import annotations

import os

import pytest

from vramplan import datafiles, presets

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A cache folder of the test's own ($VRAMPLAN_CACHE_DIR, as tests/conftest.py sets per worker)."""
    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def no_parse(text: str) -> dict:
    raise AssertionError("parsed again although the file did not change")


def test_second_read_comes_from_the_cache(cache, monkeypatch):
    source = cache / "data.toml"
    source.write_text('[a]\nx = 1\nname = "one"\nlist = [1.5, 2]\nflag = true\n')
    first = datafiles.read_toml(str(source))
    assert first == tomllib.loads(source.read_text())
    cached = datafiles.cache_path(str(source))
    assert cached.startswith(str(cache / "cache")) and os.path.exists(cached)
    monkeypatch.setattr(datafiles, "_parse", no_parse)
    assert datafiles.read_toml(str(source)) == first


def test_an_edited_or_moved_file_is_parsed_again(cache):
    source = cache / "data.toml"
    source.write_text("x = 1\n")
    assert datafiles.read_toml(str(source)) == {"x": 1}
    source.write_text("x = 22\n")  # another size
    assert datafiles.read_toml(str(source)) == {"x": 22}
    source.write_text("x = 33\n")  # the same size, a later modification time
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 1_000_000))
    assert datafiles.read_toml(str(source)) == {"x": 33}
    other = cache / "elsewhere"
    other.mkdir()
    (other / "data.toml").write_text("x = 44\n")  # the same name in another folder: its own cache file
    assert datafiles.read_toml(str(other / "data.toml")) == {"x": 44}
    assert datafiles.read_toml(str(source)) == {"x": 33}


def test_a_damaged_cache_is_ignored_and_rewritten(cache, monkeypatch):
    source = cache / "data.toml"
    source.write_text("x = 1\n")
    datafiles.read_toml(str(source))
    with open(datafiles.cache_path(str(source)), "wb") as f:
        f.write(b"\x00garbage")
    assert datafiles.read_toml(str(source)) == {"x": 1}
    monkeypatch.setattr(datafiles, "_parse", no_parse)
    assert datafiles.read_toml(str(source)) == {"x": 1}


def test_an_unwritable_cache_folder_only_costs_the_parse(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(blocker / "cache"))  # under a file: no folder can be made
    source = tmp_path / "data.toml"
    source.write_text("x = 1\n")
    assert datafiles.read_toml(str(source)) == {"x": 1}
    assert datafiles.read_toml(str(source)) == {"x": 1}


def test_a_value_marshal_cannot_hold_leaves_no_cache(cache):
    source = cache / "data.toml"
    source.write_text("when = 1979-05-27T07:32:00Z\n")  # a datetime: tomllib returns it, marshal cannot store it
    assert datafiles.read_toml(str(source)) == tomllib.loads(source.read_text())
    assert os.listdir(os.path.dirname(datafiles.cache_path(str(source)))) == []


def test_the_cache_folder_rule(monkeypatch, tmp_path):
    monkeypatch.delenv("VRAMPLAN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datafiles.cache_dir() == str(tmp_path / "vramplan")
    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(tmp_path / "mine"))
    assert datafiles.cache_dir() == str(tmp_path / "mine")


def test_the_index_is_the_files_tables():
    with open(presets.INDEX, "rb") as f:
        assert presets.read_index() == tomllib.load(f)
