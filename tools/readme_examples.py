"""Regenerate the README's example outputs and quoted figures by running the commands they come from.

    python tools/readme_examples.py           # rewrite every example block and value in README.md
    python tools/readme_examples.py --check   # exit 1 if any of them differs from what its command prints now

An example block is a fenced block between two markers that name the command:

    <!-- example: vramplan compare --model llama2-7b --gpu rtx4090 -->
    ```
    (the command's stdout)
    ```
    <!-- /example -->

A figure quoted in prose is a value, `<!--v:KEY-->13.9 GiB<!--/v-->` (invisible when rendered), defined once in
a `<!-- values` comment block: one line per key, the command (printing JSON), the field (dots; a number indexes a
list), and how to print it: GiB/MiB/GB with a number of decimals (default 1), or `n` for a plain number.

    <!-- values
    lora7b-card = vramplan estimate --model llama-7b --method lora --gpu rtx4090 --json :: total_gpu_bytes GiB 1
    -->

Commands run as `python -m vramplan ...` from the repo root, at a fixed console width (COLUMNS=120), with the
calibration store and caches in a temporary folder; exit codes 0 (fits) and 1 (does not fit) are both outputs.
Trailing spaces are stripped, and so is the one figure that varies between runs and machines: the search time in
"Searched 69 plans in 0.04 s." (the README shows "Searched 69 plans."; benchmarks/search_speed.py measures it).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
WIDTH = 120
# A marker stands alone on its line; the block ends at the first closing marker after it.
BLOCK = re.compile(r"^(<!-- example: (?P<command>[^\n]+?) -->\n)(?P<body>.*?)^(<!-- /example -->)$",
                   re.DOTALL | re.MULTILINE)
# Figures that vary from run to run, and what the README shows instead: the search time of `suggest`.
VARYING = [(re.compile(r"(Searched [\d,]+ plans) in \d+(?:\.\d+)? s\."), r"\1.")]
VALUE = re.compile(r"<!--v:(?P<key>[\w.-]+)-->(?P<text>.*?)<!--/v-->")
VALUE_DEFS = re.compile(r"^<!-- values\b[^\n]*\n(?P<lines>.*?)^-->$", re.DOTALL | re.MULTILINE)
VALUE_DEF = re.compile(r"^(?P<key>[\w.-]+) = (?P<command>vramplan .+?) :: (?P<field>\S+)"
                       r"(?: (?P<unit>GiB|MiB|GB|n))?(?: (?P<digits>\d))?$")
UNITS = {"GiB": 2**30, "MiB": 2**20, "GB": 10**9}


class ExampleError(Exception):
    """A marker's command is not a vramplan command, or it failed (exit code other than 0 or 1)."""


def _stdout(command: str) -> str:
    """What `command` (a vramplan command line) prints, run hermetically at the README's width."""
    argv = shlex.split(command)
    if not argv or argv[0] != "vramplan":
        raise ExampleError(f"example command must start with 'vramplan': {command!r}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "COLUMNS": str(WIDTH), "LINES": "1000", "TERM": "dumb", "NO_COLOR": "1",
               "XDG_CACHE_HOME": tmp, "VRAMPLAN_CACHE_DIR": str(Path(tmp) / "vramplan"),
               "VRAMPLAN_CALIBRATION_DB": str(Path(tmp) / "calibrations.sqlite3"), "HF_HUB_OFFLINE": "1",
               "PYTHONHASHSEED": "0"}
        env.pop("VRAMPLAN_GPU_DIR", None)
        done = subprocess.run([sys.executable, "-m", "vramplan", *argv[1:]], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
    if done.returncode not in (0, 1):
        raise ExampleError(f"`{command}` exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def run_example(command: str) -> str:
    """The command's stdout as the README shows it: fixed width, no trailing spaces, ending in one newline."""
    text = _stdout(command)
    for pattern, replacement in VARYING:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines()) + "\n"


def value_definitions(text: str) -> dict[str, re.Match[str]]:
    """The `<!-- values` blocks' lines by key."""
    defs: dict[str, re.Match[str]] = {}
    for block in VALUE_DEFS.finditer(text):
        for line in filter(None, map(str.strip, block["lines"].splitlines())):
            match = VALUE_DEF.match(line)
            if match is None:
                raise ExampleError(f"value definition is not 'KEY = vramplan ... :: field [unit] [digits]': {line!r}")
            defs[match["key"]] = match
    return defs


def format_value(data: object, field: str, unit: str | None, digits: str | None) -> str:
    """The field of a command's JSON output as the prose quotes it."""
    value = data
    for part in field.split("."):
        try:
            value = value[int(part)] if part.isdigit() else value[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            raise ExampleError(f"no field {field!r} in the command's JSON output") from None
    if unit in UNITS:
        return f"{value / UNITS[unit]:.{int(digits or 1)}f} {unit}"
    if isinstance(value, float):
        return f"{value:,.{int(digits or 1)}f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def outputs(text: str) -> dict[str, str]:
    """Each command of the text's example blocks and value definitions (once, in order) and what it prints now."""
    printed = {c: run_example(c) for c in dict.fromkeys(m["command"] for m in BLOCK.finditer(text))}
    for command in dict.fromkeys(d["command"] for d in value_definitions(text).values()):
        printed.setdefault(command, _stdout(command))
    return printed


def render(text: str, printed: dict[str, str]) -> str:
    """The text with every example block and value regenerated (commands missing from `printed` run)."""
    def block(match: re.Match[str]) -> str:
        output = printed.get(match["command"]) or run_example(match["command"])
        return f"{match[1]}```\n{output}```\n{match[4]}"

    defs = value_definitions(text)

    def value(match: re.Match[str]) -> str:
        if match["key"] not in defs:
            raise ExampleError(f"value {match['key']!r} has no definition in a '<!-- values' block")
        d = defs[match["key"]]
        out = printed.get(d["command"]) or _stdout(d["command"])
        try:
            data = json.loads(out)
        except json.JSONDecodeError:
            raise ExampleError(f"`{d['command']}` does not print JSON (add --json)") from None
        return f"<!--v:{match['key']}-->{format_value(data, d['field'], d['unit'], d['digits'])}<!--/v-->"

    return VALUE.sub(value, BLOCK.sub(block, text))


def check(current: str, fresh: str) -> list[str]:
    """A unified diff of the blocks that differ; empty when the README is current."""
    if current == fresh:
        return []
    return list(difflib.unified_diff(current.splitlines(), fresh.splitlines(), "README.md", "regenerated",
                                     lineterm=""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any example block is out of date")
    parser.add_argument("--readme", type=Path, default=README, help="the file to regenerate (default: README.md)")
    args = parser.parse_args(argv)
    try:
        printed = outputs(args.readme.read_text(encoding="utf-8"))
        # Read again just before writing: the commands take seconds, and others may edit the README meanwhile.
        current = args.readme.read_text(encoding="utf-8")
        fresh = render(current, printed)
    except (ExampleError, subprocess.TimeoutExpired) as err:
        print(f"readme_examples: {err}", file=sys.stderr)
        return 2
    if args.check:
        diff = check(current, fresh)
        print("\n".join(diff) if diff else f"{len(printed)} example commands: the README is up to date.")
        return 1 if diff else 0
    if fresh != current:
        args.readme.write_text(fresh, encoding="utf-8")
    print(f"regenerated the output of {len(printed)} example commands in {args.readme.name}:")
    for command in printed:
        print(f"  {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
