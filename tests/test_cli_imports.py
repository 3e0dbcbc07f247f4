"""The CLI's import graph: `vramplan.cli` registers the subcommands of `vramplan.commands` (by module name, imported
when invoked), and no module those reach imports the CLI back (lazy imports inside functions included): read from
the source with `ast`, so a cycle is found whether or not the import runs."""

from __future__ import annotations

import ast
from pathlib import Path

import vramplan

ROOT = Path(vramplan.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the vramplan modules it imports anywhere in its source (module level or inside a function)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    from vramplan.cli import COMMANDS  # the registrar imports these by name (parsing.LazySubcommands)

    graph["vramplan.cli"] |= {f"vramplan.commands.{module}" for module, _ in COMMANDS.values()}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_nothing_the_cli_reaches_imports_it_back():
    graph = import_graph()
    back = sorted(m for m in reachable(graph, "vramplan.cli") if "vramplan.cli" in graph[m])
    assert not back, f"modules reached from vramplan.cli that import it: {back}"


def test_no_command_module_is_in_a_cycle():
    graph = import_graph()
    commands = [m for m in graph if m.startswith("vramplan.commands")]
    cyclic = sorted(m for m in commands if m in reachable(graph, m))
    assert not cyclic, f"command modules that import themselves through others: {cyclic}"


def test_the_registrar_is_short():
    """issue 11: `cli.py` is a registrar (under 80 lines); each subcommand is a parser function and a run."""
    assert len((ROOT / "cli.py").read_text().splitlines()) < 80
    from vramplan.cli import COMMANDS

    for name, (module_name, _) in COMMANDS.items():
        module = __import__(f"vramplan.commands.{module_name}", fromlist=["_"])
        assert callable(getattr(module, f"add_{name}_parser")), f"{module_name} has no add_{name}_parser"
        assert callable(getattr(module, f"run_{name}")), f"{module_name} has no run_{name}"


def test_each_command_is_listed_once_with_the_registrar_help():
    """One owner for a command's one-line help: the registrar's table. Building every parser (a lookup builds
    it) adds no second line to `vramplan --help`, and each parser runs its own command."""
    from vramplan.cli import COMMANDS, build_parser

    parser = build_parser()
    before = parser.format_help()
    subparsers = parser.parse_args(["models"]).subparsers
    for name in COMMANDS:
        assert subparsers[name].prog == f"vramplan {name}"
        assert subparsers[name].get_default("run").__name__ == f"run_{name}"
    assert parser.format_help() == before
    listed = [line.split()[0] for line in before.split("COMMAND\n", 1)[1].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(COMMANDS)
