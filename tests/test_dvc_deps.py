"""Every project module a stage imports is a declared dependency in dvc.yaml, so editing it
re-runs the stage instead of leaving stale results behind."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(module: str) -> Path | None:
    """The file of a dotted project module (a module or a package), None outside the project."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the project modules one file imports (absolute and relative)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)   # submodules
    return {name for name in found if name.split(".")[0] == "stages"}


def closure(module: str) -> set[Path]:
    """The files a module loads from the project, itself and its parent packages included."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                pending.extend(imported_modules(path))
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(dep) or Path(dep) in rel.parents for dep in deps)


def test_closure_follows_relative_imports():
    files = {p.relative_to(ROOT).as_posix() for p in closure("stages.train_segmenter")}
    assert {"stages/segment/models.py", "stages/common/lite0.py",
            "stages/datasets/prepared.py"} <= files


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_every_module_it_imports(name):
    stage = STAGES[name]
    module = stage["cmd"].removeprefix("python -m ").split()[0]
    missing = sorted(str(p.relative_to(ROOT)) for p in closure(module)
                     if p.read_text().strip() and not covered(p, stage["deps"]))
    assert not missing, f"dvc.yaml stage {name} lacks deps: {missing}"
