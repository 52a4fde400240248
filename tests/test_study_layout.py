"""The study package's three rooms (fashionbg/study/__init__.py): imports run one way, read
from the source (every import, a function's lazy ones included), and no module imports itself
back through others."""
from __future__ import annotations

import ast
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "fashionbg/study"
ROOMS = {"plan", "run", "read"}
# What each room may import from the study: its own modules, plan, and the shared study-level
# modules ("" below: experiments.py), which import no room.
ALLOWED = {"plan": {"plan", ""}, "run": {"run", "plan", ""}, "read": {"read", "plan", ""},
           "": {""}}


def import_graph(package: Path, qualified: str) -> dict[str, set[str]]:
    """Module → the modules of `package` (importable as `qualified`) it imports, wherever in
    the file the import is; names relative to the package ("plan.definition", "__main__")."""
    files = {".".join(p.relative_to(package).with_suffix("").parts).removesuffix("__init__")
             .rstrip("."): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:   # relative: from the module's own package upwards
                    here = f"{qualified}.{name}".rstrip(".").split(".")
                    here = here if path.name == "__init__.py" else here[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]   # a module, or in one
            else:
                continue
            for target in targets:   # the deepest module of the package the name is in
                if target != qualified and not target.startswith(f"{qualified}."):
                    continue
                target = target.removeprefix(qualified).removeprefix(".")
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def room(module: str) -> str | None:
    """The room a module is in; "" for a shared study-level module; None for __main__, the one
    command line, which may import every room."""
    if module == "__main__":
        return None
    first = module.partition(".")[0]
    return first if first in ROOMS else ""


def wrong_arrows(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = room(module)
        for target in sorted(targets):
            if mine is not None and room(target) not in ALLOWED[mine]:
                wrong.append(f"{module} -> {target}")
    return wrong


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each set of modules that import one another, through any path (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_study_imports_run_one_way_without_a_circle():
    graph = import_graph(STUDY, "fashionbg.study")
    assert {room(m) for m in graph} == {*ROOMS, "", None}
    assert wrong_arrows(graph) == []
    assert circles(graph) == []


def test_each_room_says_what_it_owns_and_may_import():
    for name in ROOMS:
        doc = ast.get_docstring(ast.parse((STUDY / name / "__init__.py").read_text())) or ""
        assert "import" in doc.lower(), name


def test_the_checks_see_lazy_and_relative_imports_a_wrong_arrow_and_a_circle(tmp_path):
    package = tmp_path / "study"
    for room_name in ROOMS:
        (package / room_name).mkdir(parents=True)
        (package / room_name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "experiments.py").write_text("")
    (package / "plan/a.py").write_text("from . import b\n")
    (package / "plan/b.py").write_text("def f():\n    from study.plan import a\n")
    (package / "run/c.py").write_text("import study.read.d\n")
    (package / "read/d.py").write_text("from ..plan.a import x\nfrom study import experiments\n")
    graph = import_graph(package, "study")
    assert graph["plan.a"] == {"plan.b"}
    assert graph["read.d"] == {"plan.a", "experiments"}
    assert wrong_arrows(graph) == ["run.c -> read.d"]
    assert circles(graph) == [["plan.a", "plan.b"]]
