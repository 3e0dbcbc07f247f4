"""issue 10, "Fast where users feel it": `vramplan --help`, `models` and `gpus` start as light as argparse allows.

Asserted on what a fresh process imports (sys.modules), never on time; the timings are benchmarks/cli_startup.py's.
Each command runs in its own interpreter through `vramplan.cli.main`, as the console script runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vramplan.cli import COMMANDS

HEAVY = ("pydantic", "rich", "torch", "transformers", "yaml", "vramplan.hardware", "vramplan.models",
         "vramplan.plan", "vramplan.estimator")

PROBE = """
import contextlib, io, json, sys
at_start = set(sys.modules)
from vramplan.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main({argv!r})
    except SystemExit as exc:
        code = exc.code
print(json.dumps({{"code": code, "out": out.getvalue(), "modules": sorted(sys.modules),
                  "added": sorted(set(sys.modules) - at_start)}}))
"""
# Standard-library modules that cost 1-8 ms each on a cold start and that these commands do without (an
# interpreter may load some at start-up, e.g. the editable install's finder loads pathlib: only additions count)
STDLIB_AVOIDED = ("typing", "pathlib", "shutil", "difflib", "json", "tomllib", "dataclasses", "inspect", "importlib")


def run_fresh(*argv: str, env: dict[str, str] | None = None) -> dict:
    """Exit code, stdout and the imported module names of `vramplan *argv` in a fresh interpreter."""
    cmd = [sys.executable, "-c", PROBE.format(argv=list(argv))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, env=env)
    return json.loads(done.stdout)


def command_modules() -> set[str]:
    return {f"vramplan.commands.{module}" for module, _ in COMMANDS.values()}


@pytest.mark.parametrize("argv, own", [
    (("--help",), set()),
    ((), set()),
    (("models",), {"vramplan.commands.listing"}),
    (("gpus",), {"vramplan.commands.listing"}),
    (("estimate", "--help"), {"vramplan.commands.estimate"}),
])
def test_only_the_invoked_command_is_imported_and_nothing_heavy(argv, own):
    probe = run_fresh(*argv)
    modules = set(probe["modules"])
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)
    assert not heavy, f"vramplan {' '.join(argv)} imported {heavy}"
    assert modules & command_modules() == own
    assert probe["code"] in (0, 2) and probe["out"].strip()


@pytest.mark.parametrize("argv", [("--help",), ("models",), ("gpus",)])
def test_the_listings_and_help_skip_the_costly_stdlib_modules(argv, tmp_path):
    """The second run reads the TOML files' marshal copies (vramplan.datafiles.read_toml), with bytecode written as
    an installed package has it: no tomllib, and none of the other modules the start-up does without."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPYCACHEPREFIX=str(tmp_path / "pyc"), VRAMPLAN_CACHE_DIR=str(tmp_path / "cache"))
    run_fresh(*argv, env=env)
    probe = run_fresh(*argv, env=env)
    assert probe["code"] == 0 and not set(probe["added"]) & set(STDLIB_AVOIDED), probe["added"]


def test_top_level_help_lists_every_command_without_building_one():
    probe = run_fresh("--help")
    assert probe["code"] == 0
    for name, (_, text) in COMMANDS.items():
        assert name in probe["out"] and text.split()[0] in probe["out"]


def test_a_subcommands_help_still_shows_its_flags():
    probe = run_fresh("estimate", "--help")
    assert probe["code"] == 0 and "--model" in probe["out"] and "--per-device-train-batch-size" in probe["out"]


def test_unknown_command_is_one_line_with_a_did_you_mean(capsys):
    from vramplan.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["estimat"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "did you mean estimate?" in err[0]


def test_no_command_prints_the_help_and_exits_2(capsys):
    from vramplan.cli import main

    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_the_builtin_gpu_table_is_the_validated_one(monkeypatch, tmp_path):
    """`gpus` reads the built-in files as written; the validated loader (vramplan.hardware) is the oracle: an empty
    user folder sends the command down the validated path, and both tables are the same text."""
    from vramplan import hardware
    from vramplan.cli import main
    from vramplan.commands import listing

    assert listing.GPU_DIR_ENV == hardware.ENV_VAR
    fast = run_fresh("gpus")
    monkeypatch.setenv(hardware.ENV_VAR, str(tmp_path))
    validated = subprocess.run([sys.executable, "-m", "vramplan", "gpus"], capture_output=True, text=True,
                               check=True, timeout=120)
    assert fast["code"] == 0 and fast["out"] == validated.stdout
    assert [g.slug for g in listing.builtin_gpus()] == list(hardware.load_profiles())
    monkeypatch.delenv(hardware.ENV_VAR)
    assert main(["gpus"]) == 0
