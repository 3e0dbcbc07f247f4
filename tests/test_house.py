"""The house rules of issue 11 ("Done when") as checks over the source text: read with `ast`, nothing imported.

- no module under vramplan/ over 400 lines;
- no function over 60 lines (from its `def` line to its last line, decorators excluded) except the op-by-op layer
  replays, defined as the functions whose first parameter is annotated `Tape` (the layer programs record one op per
  line on the tape, and splitting them would hide the order of the ops; `tp: Tape` is their signature);
- no import cycle among vramplan modules, imports inside functions included (`from vramplan.x import y` is an edge
  to `vramplan.x.y` when that is a module, else to `vramplan.x`; importing `vramplan.x.y` runs the package
  `vramplan.x`'s `__init__` first, so that is an edge too);
- no `model_type` string tests in vramplan/estimator/ (a comparison of a name or attribute `model_type` against a
  str constant or a tuple/list/set of them, `model_type.startswith(...)`, or a lookup keyed by `model_type`:
  `table[model_type]`, `table.get(model_type)`): architecture differences are traits;
- no `_drift` anywhere in vramplan/; `vramplan/cli.py` under 80 lines;
- every exception class is defined in vramplan/errors.py (as a `VramplanError`) or is private (a leading `_`);
- the core (vramplan/ outside measure/) imports no torch, transformers or peft at module level.
"""

from __future__ import annotations

import ast
import builtins
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "vramplan"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_CLI_LINES = 80
HEAVY = {"torch", "transformers", "peft"}



def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _sources() -> dict[str, tuple[Path, str, ast.Module]]:
    """module name -> (path, text, tree) for every .py file under vramplan/."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        out[_module_name(path)] = (path, text, ast.parse(text))
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


def long_modules() -> list[str]:
    return [f"{_rel(p)}: {len(t.splitlines())} lines" for p, t, _ in _sources().values()
            if len(t.splitlines()) > MAX_MODULE_LINES]


def _first_param_annotation(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    params = fn.args.posonlyargs + fn.args.args
    if params and params[0].arg in ("self", "cls"):
        params = params[1:]
    if not params or params[0].annotation is None:
        return None
    ann = params[0].annotation
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
        return ann.value
    return ann.id if isinstance(ann, ast.Name) else ast.unparse(ann)


def long_functions() -> list[str]:
    found = []
    for name, (path, _, tree) in _sources().items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and _first_param_annotation(node) != "Tape":
                found.append(f"{name}.{node.name} ({_rel(path)}:{node.lineno}): {lines} lines")
    return found


def _resolve_from(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module a `from ... import` names (relative imports resolved against `module`)."""
    if node.level == 0:
        return node.module
    path = _sources()[module][0]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _running_nodes(tree: ast.Module):
    """Every node of the tree except those under `if TYPE_CHECKING:` (never run, so no import edge)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the vramplan modules importing it runs (anywhere in its source, module level or in a function;
    not under `if TYPE_CHECKING:`)."""
    modules = _sources()
    graph: dict[str, set[str]] = {}
    for name, (_, _, tree) in modules.items():
        targets: set[str] = set()
        for node in _running_nodes(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(name, node)
                if base is None:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        edges: set[str] = set()
        for target in targets:
            parts = target.split(".")
            # importing a.b.c runs a, a.b and a.b.c; the top package `vramplan` itself is left out (its __init__ is
            # run by every import and holds only lazy re-exports, checked separately as an ordinary module)
            edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        graph[name] = {m for m in edges if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def import_cycles() -> list[list[str]]:
    """Strongly connected components of the import graph with more than one module (Tarjan)."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_model_type(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "model_type") or (
        isinstance(node, ast.Attribute) and node.attr == "model_type")


def _is_str_or_strs(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return False


def model_type_tests() -> list[str]:
    found = []
    for name, (path, _, tree) in _sources().items():
        if not name.startswith("vramplan.estimator"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(map(_is_model_type, sides)) and any(map(_is_str_or_strs, sides)):
                    found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.Subscript) and _is_model_type(node.slice):
                found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                  and node.args and _is_model_type(node.args[0])):
                found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("startswith", "endswith") and _is_model_type(node.func.value)):
                found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
    return found


def _builtin_exception(name: str) -> bool:
    obj = getattr(builtins, name, None)
    return isinstance(obj, type) and issubclass(obj, BaseException)


def _base_name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def stray_exceptions() -> list[str]:
    """Public exception classes defined outside vramplan/errors.py (a class is an exception when a base is a
    builtin exception or another exception class found in vramplan/)."""
    classes = [(name, path, node) for name, (path, _, tree) in _sources().items()
               for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    names: set[str] = set()  # names of the exception classes found so far (a base is matched by its name)
    found: list[ast.ClassDef] = []
    grew = True
    while grew:
        grew = False
        for _, _, node in classes:
            if node not in found and any(_builtin_exception(b) or b in names for b in map(_base_name, node.bases)):
                names.add(node.name)
                found.append(node)
                grew = True
    return [f"{_rel(path)}:{node.lineno}: class {node.name}" for name, path, node in classes
            if node in found and name != "vramplan.errors" and not node.name.startswith("_")]


def errors_outside_hierarchy() -> list[str]:
    """Classes in errors.py that are exceptions but not VramplanError subclasses."""
    tree = _sources()["vramplan.errors"][2]
    family = {"VramplanError"}
    out = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name != "VramplanError":
            bases = set(map(_base_name, node.bases))
            if bases & family:
                family.add(node.name)
            elif any(map(_builtin_exception, bases)):
                out.append(node.name)
    return out


def heavy_module_level_imports() -> list[str]:
    """Module-level imports of torch/transformers/peft in the core (outside vramplan/measure/). An import under
    `if TYPE_CHECKING:` does not run and is allowed."""
    found = []
    for name, (path, _, tree) in _sources().items():
        if name == "vramplan.measure" or name.startswith("vramplan.measure."):
            continue
        todo = list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                todo.extend(node.orelse)
                continue
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    todo.extend(getattr(node, field, []))
            elif isinstance(node, ast.ExceptHandler):
                todo.extend(node.body)
            elif isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
                if roots & HEAVY:
                    found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in HEAVY:
                found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_over_400_lines():
    assert not long_modules(), long_modules()


def test_no_function_over_60_lines_except_layer_replays():
    assert not long_functions(), long_functions()


def test_no_import_cycles():
    assert not import_cycles(), import_cycles()


def test_no_model_type_string_tests_in_estimator():
    assert not model_type_tests(), model_type_tests()


def test_no_drift():
    assert [_rel(p) for p, text, _ in _sources().values() if "_drift" in text] == []


def test_cli_is_a_short_registrar():
    path, text, _ = _sources()["vramplan.cli"]
    assert len(text.splitlines()) < MAX_CLI_LINES, _rel(path)


def test_every_exception_class_lives_in_errors():
    assert not stray_exceptions(), stray_exceptions()
    assert errors_outside_hierarchy() == []


def test_core_imports_no_torch_at_module_level():
    assert heavy_module_level_imports() == []


def test_the_checks_see_what_they_look_for():
    """The checkers find a violation planted in a snippet (so an empty answer above means none, not a blind check)."""
    tree = ast.parse("if cfg.model_type == 'gemma2':\n    pass\nx = TABLE[model_type]\n")
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert _is_model_type(compares[0].left) and _is_str_or_strs(compares[0].comparators[0])
    fn = ast.parse("def f(tp: Tape, c):\n    pass\n").body[0]
    assert _first_param_annotation(fn) == "Tape"
    graph = import_graph()
    assert "vramplan.commands" in graph["vramplan.cli"] or any(
        m.startswith("vramplan.commands") for m in graph["vramplan.cli"])
