"""vramplan.errors: one hierarchy, one exit-code rule (2: the input is wrong; 1: this machine cannot carry it out),
every class defined there."""

from __future__ import annotations

import inspect
import pkgutil
from importlib import import_module

import pytest

import vramplan
from vramplan import errors


def test_the_exit_code_is_2_for_input_errors_and_1_for_the_rest():
    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, errors.VramplanError)]
    assert len(classes) >= 10
    for cls in classes:
        assert cls.exit_code == (2 if issubclass(cls, errors.InputError) else 1), cls


LIGHT = [m.name for m in pkgutil.walk_packages(vramplan.__path__, "vramplan.")
         if not m.name.startswith(("vramplan.measure.", "vramplan.web")) and m.name != "vramplan.__main__"]


@pytest.mark.parametrize("name", LIGHT)
def test_no_module_of_the_core_defines_its_own_error_class(name):
    module = import_module(name)
    own = [k for k, v in vars(module).items() if inspect.isclass(v) and issubclass(v, errors.VramplanError)
           and v.__module__ == name]
    assert name == "vramplan.errors" or not own, own


def test_fetching_a_hub_config_turns_network_and_json_failures_into_none(monkeypatch):
    import urllib.error
    import urllib.request

    from vramplan import models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VRAMPLAN_OFFLINE", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert models._fetch_config("org/model") is None

    def broken(*args, **kwargs):  # a bug, not the network: it is not hidden
        raise KeyError("bug")

    monkeypatch.setattr(urllib.request, "urlopen", broken)
    with pytest.raises(KeyError):
        models._fetch_config("org/model")
