"""The golden outputs of the redesign (issue 11): every number `estimate`, `compare`, `suggest` and `calibrate`
print for a fixed list of a few hundred invocations, recorded from the code before the redesign.

    python tools/golden.py            # rewrite tests/golden/outputs.json (only before a behaviour change!)
    python tools/golden.py --check    # exit 1 and list the invocations whose numbers moved

A text output is pinned by the sequence of numbers it prints (wording, columns and engine names may change);
a `--json` output by every numeric leaf under its key path. `tests/test_golden.py` runs the check.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "outputs.json"
TIMINGS = ("/search_seconds",)  # wall-clock figures, not estimates
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")

MODELS = ("qwen2.5-0.5b", "llama3.2-1b", "llama2-7b", "llama3.1-8b", "mistral-7b", "gemma2-2b", "qwen3-30b-a3b",
          "phi3-mini", "mixtral-8x7b", "qwen2.5-14b")
VARIANTS = (
    (),
    ("--seq", "4096", "--batch", "2"),
    ("--no-grad-ckpt", "--seq", "1024"),
    ("--optimizer", "paged_adamw_8bit", "--targets", "all-linear", "--rank", "64"),
    ("--attn", "eager", "--seq", "2048"),
    ("--gpus", "4", "--sharding", "fsdp"),
    ("--gpus", "2", "--sharding", "zero3", "--offload", "optimizer"),
    ("--gpus", "8", "--sharding", "ddp", "--grad-accum", "4"),
    ("--trainer", "trl-sft", "--seq", "2048"),
    ("--trainer", "loop", "--eval-batch", "4"),
)
METHODS = ("full", "lora", "qlora")


def invocations() -> list[list[str]]:
    """The fixed list: estimate over models x methods x variants (text on one GPU, --json without), compare,
    suggest and one traced calibrate."""
    runs: list[list[str]] = []
    for i, (model, method, variant) in enumerate(itertools.product(MODELS, METHODS, VARIANTS)):
        base = ["estimate", "--model", model, "--method", method, *variant]
        runs.append([*base, "--json"] if i % 2 else [*base, "--gpu", ("rtx4090", "a100-80gb", "h100-sxm")[i % 3]])
    for model in MODELS[:6]:
        runs.append(["compare", "--model", model, "--seq", "2048"])
        runs.append(["compare", "--model", model, "--gpu", "rtx4090", "--json"])
    runs.append(["estimate", "--model", "llama2-7b", "--method", "lora", "--trainer", "trl-dpo", "--gpu", "rtx4090"])
    runs.append(["estimate", "--model", "llama2-7b", "--method", "qlora", "--use-dora", "--gpu", "rtx4090"])
    runs.append(["estimate", "--model", "qwen2.5-7b", "--method", "lora", "--modules-to-save", "lm_head",
                 "--json"])
    return runs


SLOW = (  # seconds each: the search and the trace
    ["suggest", "--model", "llama-7b", "--gpu", "rtx4090", "--no-calibration"],
    ["suggest", "--model", "qwen2.5-7b", "--gpu", "a100-80gb", "--json", "--no-calibration"],
    ["calibrate", "--model", "qwen2.5-0.5b", "--method", "lora", "--seq", "256", "--trace", "--no-save", "--json"],
)


def numbers(argv: list[str], out: str) -> object:
    if "--json" in argv:
        found = leaves(json.loads(out))
        return {k: v for k, v in found.items() if k not in TIMINGS}
    out = re.sub(r"in [\d.]+ s\.", "", out)  # suggest's "Searched 71 plans in 14.04 s."
    return [n.replace(",", "") for n in NUMBER.findall(out)]


def leaves(node: object, path: str = "") -> dict[str, object]:
    """Every numeric (and boolean) leaf under its key path; lists are indexed."""
    found: dict[str, object] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            found.update(leaves(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.update(leaves(value, f"{path}/{i}"))
    elif isinstance(node, (int, float, bool)):
        found[path] = node
    return found


def run(argv: list[str]) -> tuple[int, object]:
    from vramplan.cli import main

    out, err = io.StringIO(), io.StringIO()
    # the width of a piped output (commands/plan_flags.console): tables wrap, and so order their numbers, by width;
    # a test runner may set COLUMNS (pytest-xdist workers do), which the console would follow
    columns = os.environ.pop("COLUMNS", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        if columns is not None:
            os.environ["COLUMNS"] = columns
    if code == 2:  # an input error: its one line is the output
        return code, err.getvalue().strip()
    return code, numbers(argv, out.getvalue())


def same(expected: object, got: dict) -> bool:
    """The same numbers: an equal text sequence or error line; for `--json`, every recorded leaf unchanged (new
    leaves, such as a computed total, may be added)."""
    if not isinstance(expected, dict) or expected["exit"] != got["exit"]:
        return False
    old, new = expected["numbers"], got["numbers"]
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and new[k] == v for k, v in old.items())
    return old == new


def moved(expected: dict, got: dict) -> list[str]:
    """What differs, for a failing test's message: exit codes, or the positions/keys whose numbers moved."""
    if expected["exit"] != got["exit"]:
        return [f"exit {expected['exit']} -> {got['exit']}"]
    old, new = expected["numbers"], got["numbers"]
    if isinstance(old, dict) and isinstance(new, dict):
        return [f"{k}: {v} -> {new.get(k)}" for k, v in old.items() if new.get(k) != v]
    if isinstance(old, list) and isinstance(new, list):
        return [f"#{i}: {a} -> {b}" for i, (a, b) in enumerate(zip(old, new)) if a != b] + (
            [f"{len(old)} numbers -> {len(new)}"] if len(old) != len(new) else [])
    return [f"{old} -> {new}"]


def record(argvs: list[list[str]]) -> dict[str, object]:
    golden = {}
    for argv in argvs:
        code, nums = run(argv)
        golden[" ".join(argv)] = {"exit": code, "numbers": nums}
    return golden


def main() -> int:
    argvs = invocations() + [list(a) for a in SLOW]
    if "--check" in sys.argv:
        expected = json.loads(GOLDEN.read_text())
        moved = [k for k, v in record(argvs).items() if not same(expected.get(k), v)]
        print("\n".join(moved) or "golden: every number unchanged")
        return 1 if moved else 0
    GOLDEN.write_text(json.dumps(record(argvs), indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(argvs)} invocations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
