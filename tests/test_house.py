"""The shape of the house (issue 15): import floors, cycles, and the rooms that are too large.

Floors are counted over the modules of ``turbo/`` plus ``tasks.py`` (tests aside): a module
importing nothing of ours stands on floor 1, any other on one floor above the highest module it
imports. Two graphs are counted. *All imports* includes the ones deferred into function bodies:
they are the same coupling, only later, and they are how a cycle hides. *Import time* is what
Python executes when the module loads (module level, ``if TYPE_CHECKING:`` aside); a cycle there
breaks imports outright.

``python tests/test_house.py`` prints the whole table; ``pytest tests/test_house.py -s`` prints
it too. docs/house.md records the figures and the target (at most 6 floors, every module under
500 lines, every function under 80).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_LIMIT = 500  # lines per module (the target)
FUNCTION_LIMIT = 80  # lines per function or method, decorators excluded (the target)


def module_files(root: Path) -> dict[str, Path]:
    """Our modules by short name: turbo/<name>.py (package __init__ aside) and tasks.py."""
    mods = {p.stem: p for p in sorted((root / "turbo").glob("*.py")) if p.stem != "__init__"}
    if (root / "tasks.py").is_file():
        mods["tasks"] = root / "tasks.py"
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, deferred: bool) -> list[ast.AST]:
    """Every node, or (not deferred) only what runs when the module is imported."""
    if deferred:
        return list(ast.walk(tree))
    out: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def _imported(tree: ast.AST, names: set[str], deferred: bool = True) -> set[str]:
    out: set[str] = set()
    for node in _statements(tree, deferred):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "turbo" and len(parts) > 1:
                    out.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if (node.level == 0 and mod == "turbo") or (node.level == 1 and not mod):
                out.update(a.name for a in node.names)  # from turbo import x: x may be a module
            elif node.level == 0 and mod.startswith("turbo."):
                out.add(mod.split(".")[1])
            elif node.level == 1:
                out.add(mod.split(".")[0])
    return out & names


def import_graph(root: Path = REPO, *, deferred: bool = True) -> dict[str, set[str]]:
    """Each module's imports of our other modules (``deferred``: function bodies included)."""
    mods = module_files(root)
    names = set(mods)
    return {
        name: _imported(ast.parse(path.read_text(encoding="utf-8")), names, deferred) - {name}
        for name, path in mods.items()
    }


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Floor of each module; the modules of one cycle share a floor (counted as one room)."""
    group_of = {m: tuple(g) for g in import_cycles(graph) for m in g}
    memo: dict[str, int] = {}

    def floor(v: str) -> int:
        if v not in memo:
            mates = set(group_of.get(v, (v,)))
            for m in mates:
                memo[m] = 0  # guards the recursion; a cycle never reaches back here
            below = {d for m in mates for d in graph.get(m, ())} - mates
            f = 1 + max((floor(d) for d in below), default=0)
            for m in mates:
                memo[m] = f
        return memo[v]

    for v in graph:
        floor(v)
    return memo


def module_lines(root: Path = REPO) -> dict[str, int]:
    return {
        n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in module_files(root).items()
    }


def function_lines(root: Path = REPO) -> list[tuple[int, str]]:
    """(lines, 'module.qualname') for every function and method, longest first."""
    out: list[tuple[int, str]] = []

    def walk(node: ast.AST, prefix: str, mod: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    size = (child.end_lineno or child.lineno) - child.lineno + 1
                    out.append((size, f"{mod}.{name}"))
                walk(child, f"{name}.", mod)

    for mod, path in module_files(root).items():
        walk(ast.parse(path.read_text(encoding="utf-8")), "", mod)
    return sorted(out, key=lambda t: (-t[0], t[1]))


def _floor_rows(graph: dict[str, set[str]], title: str) -> list[str]:
    fl = floors(graph)
    rows = [f"{title}: {len(graph)} modules on {max(fl.values(), default=0)} floors"]
    for f in sorted(set(fl.values())):
        rows.append(f"  floor {f}: " + ", ".join(sorted(m for m in fl if fl[m] == f)))
    cycles = import_cycles(graph)
    rows.append("  import cycles: " + ("; ".join(" <-> ".join(c) for c in cycles) or "none"))
    return rows


def _listing(items: list[tuple[int, str]]) -> str:
    return ", ".join(f"{name} {n}" for n, name in items) or "none"


def report(root: Path = REPO) -> str:
    rows = _floor_rows(import_graph(root), "all imports")
    rows += _floor_rows(import_graph(root, deferred=False), "import time")
    big = sorted(((n, m) for m, n in module_lines(root).items() if n > MODULE_LIMIT), reverse=True)
    rows.append(f"modules over {MODULE_LIMIT} lines: {_listing(big)}")
    long = [(n, f) for n, f in function_lines(root) if n > FUNCTION_LIMIT]
    rows.append(f"functions over {FUNCTION_LIMIT} lines: {_listing(long)}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- the tests
def _tree(tmp: Path, files: dict[str, str]) -> Path:
    (tmp / "turbo").mkdir()
    for rel, text in files.items():
        (tmp / rel).write_text(text)
    return tmp


def test_counter_floors_and_finds_cycles(tmp_path: Path) -> None:
    """The counter itself, on a made-up package: every import form we use is seen."""
    root = _tree(
        tmp_path,
        {
            "turbo/__init__.py": "",
            "turbo/a.py": "import os\n",
            "turbo/b.py": "from turbo import a\n",
            "turbo/c.py": "def f():\n    from turbo.b import x\n",
            "turbo/d.py": "import turbo.c\nfrom . import a\n",
            "turbo/e.py": "from .f import g\n",
            "turbo/f.py": "from turbo import e, errors_not_ours\n",
            "tasks.py": "from turbo import d, e\n",
        },
    )
    graph = import_graph(root)
    assert graph["b"] == {"a"} and graph["c"] == {"b"} and graph["d"] == {"a", "c"}
    assert graph["f"] == {"e"} and graph["tasks"] == {"d", "e"}
    assert import_cycles(graph) == [["e", "f"]]
    fl = floors(graph)
    got = (fl["a"], fl["b"], fl["c"], fl["d"], fl["e"], fl["f"], fl["tasks"])
    assert got == (1, 2, 3, 4, 1, 1, 5)
    assert [n for n, _ in function_lines(root)] == [2]
    # at import time c's deferred import of b does not run, and a TYPE_CHECKING import is free
    (root / "turbo/g.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from turbo import tasks_not_ours, a\n"
    )
    now = import_graph(root, deferred=False)
    assert now["c"] == set() and now["g"] == set() and import_graph(root)["g"] == {"a"}


# Commands stand on top: what a task calls. Only tasks.py (the command line) may import one, so
# no stage reaches up and no command stands on another (each composes pieces from below).
COMMANDS = {
    "adopt",
    "bench",
    "build",
    "cluster_cli",
    "demo",
    "doctor",
    "kernels",
    "model_fetch",
    "patch_matrix_cli",
    "patch_refresh",
    "patches",
    "roofline",
    "serve",
    "service",
    "verify",
    "wheel",
}
COMMAND_IMPORTERS = {"tasks"}
# The target of the house (docs/house.md): ground, host and process, data, pieces, commands,
# the command line.
MOST_FLOORS = {"all imports": 6, "import time": 6}
TASKS_LIMIT = 350  # lines of tasks.py: options mapped to calls


def test_no_import_cycles_at_import_time() -> None:
    """A cycle among module-level imports breaks import order outright."""
    print("\n" + report())
    assert import_cycles(import_graph(deferred=False)) == []


def test_no_import_cycles_even_through_deferred_imports() -> None:
    """Imports deferred into function bodies couple modules just the same: no cycle there
    either (the 7-module one through doctor is gone; a new one fails here)."""
    assert import_cycles(import_graph()) == []


def test_at_most_six_floors() -> None:
    got = {
        "all imports": max(floors(import_graph()).values()),
        "import time": max(floors(import_graph(deferred=False)).values()),
    }
    assert all(got[k] <= MOST_FLOORS[k] for k in got), (got, MOST_FLOORS)


def test_no_stage_imports_a_command() -> None:
    graph = import_graph()
    importers = {m for m, deps in graph.items() if deps & COMMANDS}
    assert importers <= COMMAND_IMPORTERS, sorted(importers - COMMAND_IMPORTERS)


def test_commands_exist_and_tasks_calls_them() -> None:
    """The command list above is real: every name is a module that tasks.py imports."""
    graph = import_graph()
    assert graph["tasks"] >= COMMANDS, sorted(COMMANDS - graph["tasks"])


def test_every_module_under_the_limit() -> None:
    big = {m: n for m, n in module_lines().items() if n >= MODULE_LIMIT}
    assert not big, big


def test_every_function_under_the_limit() -> None:
    long = [(n, f) for n, f in function_lines() if n >= FUNCTION_LIMIT]
    assert not long, long


def test_tasks_only_maps_options_to_calls() -> None:
    """tasks.py is small, returns nothing untyped and silences no type error."""
    text = (REPO / "tasks.py").read_text(encoding="utf-8")
    assert len(text.splitlines()) < TASKS_LIMIT
    assert "type: ignore" not in text
    assert "-> object" not in text


if __name__ == "__main__":
    sys.stdout.write(report() + "\n")
