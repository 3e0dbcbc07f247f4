"""The README tells the truth: its example outputs are what the commands print, and CI runs its commands as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import readme_examples  # noqa: E402

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _bash_commands(text: str) -> list[str]:
    return [line for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL) for line in block.splitlines()]


def test_ci_runs_the_readme_install_and_test_commands_literally():
    """The first bash line installs and runs, the second installs and tests; .ci/run holds both as written."""
    first, second = _bash_commands(README)[:2]
    assert first == "pip install . && vramplan suggest --model llama-7b --gpu rtx4090"
    assert second.startswith("pip install -e") and "pytest" in second
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in (first, second):
        assert any(line.strip() == command or line.strip().startswith(command + " ") for line in ci), command


def test_every_example_marker_is_closed_and_names_a_vramplan_command():
    opened = re.findall(r"^<!-- example: (.+?) -->$", README, re.MULTILINE)
    closed = re.findall(r"^<!-- /example -->$", README, re.MULTILINE)
    found = [m["command"] for m in readme_examples.BLOCK.finditer(README)]
    assert opened and found == opened and len(closed) == len(opened)
    assert all(c.startswith("vramplan ") for c in opened)
    assert "vramplan suggest --model llama-7b --gpu rtx4090" in opened


def test_render_replaces_only_the_blocks_and_check_reports_them():
    text = ("intro\n<!-- example: vramplan models -->\n```\nold\n```\n<!-- /example -->\nmiddle\n"
            "<!-- example: vramplan gpus -->\n```\nsame\n```\n<!-- /example -->\nend\n")
    fresh = readme_examples.render(text, {"vramplan models": "new\n", "vramplan gpus": "same\n"})
    assert fresh == text.replace("old", "new")
    assert readme_examples.check(fresh, fresh) == []
    assert any(line == "-old" for line in readme_examples.check(text, fresh))


def test_every_quoted_figure_has_a_definition_that_prints_json():
    defs = readme_examples.value_definitions(README)
    used = {m["key"] for m in readme_examples.VALUE.finditer(README)}
    assert used and used <= set(defs)
    assert all("--json" in d["command"] for d in defs.values())


def test_values_are_read_from_the_json_and_formatted_as_quoted():
    text = ("a <!--v:peak-->0 GiB<!--/v--> b <!--v:n-->0<!--/v--> c <!--v:m-->x<!--/v-->\n<!-- values\n"
            "peak = vramplan estimate --json :: phases.1 GiB 2\nn = vramplan estimate --json :: count n\n"
            "m = vramplan estimate --json :: model\n-->\n")
    data = '{"phases": [1, 3221225472], "count": 12345, "model": "llama-7b"}'
    fresh = readme_examples.render(text, {"vramplan estimate --json": data})
    assert fresh.startswith("a <!--v:peak-->3.00 GiB<!--/v--> b <!--v:n-->12,345<!--/v--> "
                            "c <!--v:m-->llama-7b<!--/v-->")
    with pytest.raises(readme_examples.ExampleError, match="no field"):
        readme_examples.render(text.replace("phases.1", "phases.9"), {"vramplan estimate --json": data})


def test_the_search_time_is_not_written():
    pattern, replacement = readme_examples.VARYING[0]
    assert (pattern.sub(replacement, "the forward. Searched 1,069 plans in 12.04 s.")
            == "the forward. Searched 1,069 plans.")


def test_a_command_that_is_not_vramplan_is_refused():
    with pytest.raises(readme_examples.ExampleError, match="must start with 'vramplan'"):
        readme_examples.run_example("rm -rf /")


@pytest.mark.slow
def test_readme_outputs_are_current():
    """Runs every example command (seconds each). On failure: `python tools/readme_examples.py` regenerates."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_examples.py"), "--check"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
