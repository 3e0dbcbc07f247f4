"""The page's plan controls, read from the CLI's own parser: one list (`plan_flags.add_plan_arguments`), so a flag
added there appears on the page with its choices, range and help, and the query it sends is parsed back by the
same parser. Hugging Face spellings (`--lora-r`, `--bf16`, `--use-peft`) are aliases of a flag already shown
and are left out; so are the config-file flags (the page uploads a config.json instead).
"""

from __future__ import annotations

import argparse
from functools import cache

# the parser's argument groups the page shows (titles as `add_plan_arguments` names them, by prefix)
GROUPS = ("training plan", "caching allocator")
# flags whose dest another shown flag already sets, or that only translate other spellings
_ALIAS_DESTS = ("trl_", "hf_")


def _suggestions() -> dict[str, tuple[str, ...]]:
    """Free-text flags whose usual values the vocabulary owns (the parser takes more: module names, HF optim names)."""
    from vramplan.vocab import OPTIMIZERS, TARGET_SHORTHANDS

    return {"optimizer": OPTIMIZERS, "targets": TARGET_SHORTHANDS}


def _kind(action: argparse.Action) -> dict:
    """How the page draws one flag: a choice list, an integer, a number, a switch (on = the flag), a three-way
    boolean (default / on / off) or free text."""
    if isinstance(action, argparse.BooleanOptionalAction) or (action.nargs == "?" and action.const is True):
        return {"kind": "bool", "choices": ["true", "false"]}
    if isinstance(action, argparse._StoreConstAction):
        return {"kind": "switch"}
    if action.choices:
        return {"kind": "choice", "choices": list(action.choices)}
    meta = action.metavar or ""
    if meta.startswith("{") and meta.endswith("}"):
        return {"kind": "choice", "choices": meta[1:-1].split(",")}
    if action.type is int:
        return {"kind": "int"}
    if action.type is float:
        return {"kind": "number"}
    return {"kind": "text"}


def parser() -> argparse.ArgumentParser:
    """The CLI's own `estimate` and `suggest` parsers (the commands the page runs), registered as `vramplan.cli`
    does but without the other subcommands, so the web package never imports the CLI registrar (which imports
    `commands.serve`, which imports this package)."""
    from vramplan.commands.estimate import add_estimate_parser
    from vramplan.commands.parsing import StrictParser
    from vramplan.commands.suggest import add_suggest_parser

    top = StrictParser(prog="vramplan")
    sub = top.add_subparsers(dest="command", parser_class=StrictParser)
    add_estimate_parser(sub)
    add_suggest_parser(sub)
    return top


@cache
def knobs(command: str = "estimate") -> tuple[dict, ...]:
    """One record per plan flag of `command`: name (the flag without `--`), dest, kind, choices, help."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    out, seen = [], set()
    for group in sub._action_groups:
        if not (group.title or "").startswith(GROUPS):
            continue
        for action in group._group_actions:
            flag = action.option_strings[0]
            if action.help == argparse.SUPPRESS or action.dest in seen or action.dest.startswith(_ALIAS_DESTS):
                continue
            seen.add(action.dest)
            if action.option_strings[0].startswith("--no-") and isinstance(action, argparse._StoreConstAction):
                kind = {"kind": "switch"}  # --no-kbit-upcast: on = the flag
            else:
                kind = _kind(action)
            if kind["kind"] == "text" and action.dest in _suggestions():
                kind["suggestions"] = list(_suggestions()[action.dest])
            out.append({"name": flag[2:], "dest": action.dest, **kind,
                        "help": (action.help or "").replace("%(default)s", str(action.default))})
    return tuple(out)


def argv_for(command: str, query: dict[str, str]) -> list[str]:
    """The CLI's argv for a page query: `key=value` is `--key value`; a switch's "on" is `--key`; a boolean
    with BooleanOptionalAction is `--key` / `--no-key`; an empty value is the plan's default (no flag)."""
    kinds = {k["name"]: k for k in knobs(command)}
    argv = [command]
    for key, value in query.items():
        knob = kinds.get(key)
        on = value.lower() in ("1", "true", "on", "yes")
        if value == "":
            continue
        if knob is not None and knob["kind"] == "switch" or key in ("no-calibration",):
            if on:
                argv.append(f"--{key}")
        elif knob is not None and knob["kind"] == "bool":
            argv.append(f"--{key}" if on else f"--no-{key}")
        else:
            argv += [f"--{key}", value]
    return [*argv, "--json"]
