"""dvc.yaml declares exactly the project code each stage runs: every module a stage imports is
a dependency (else an edit leaves stale results), and nothing else is (else an edit re-runs
stages it cannot affect). No stage imports another stage."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "fashionbg")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(module: str) -> Path | None:
    """The file of a dotted project module (a module or a package), None outside the project."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the project modules one file imports (absolute and relative, at any
    depth, so imports inside functions count too)."""
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
    return {name for name in found if name.split(".")[0] in PACKAGES}


def closure(module: str) -> set[Path]:
    """The non-empty files a module loads from the project, itself and its parent packages
    included (an empty __init__.py holds no code to depend on)."""
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
    return {p for p in seen if p.read_text().strip()}


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if Path(d).parts[0] in PACKAGES]


def files_under(dep: str) -> set[Path]:
    path = ROOT / dep
    files = {path} if path.is_file() else set(path.rglob("*.py"))
    return {p for p in files if p.read_text().strip()}


def stage_module(stage: dict) -> str:
    """The module after `-m` (python -m X)."""
    words = stage["cmd"].split()
    return words[words.index("-m") + 1]


def test_closure_follows_imports():
    files = {p.relative_to(ROOT).as_posix() for p in closure("stages.train_segmenter")}
    assert {"fashionbg/segment/models.py", "fashionbg/nn/lite0.py",
            "fashionbg/contracts/prepared.py", "stages/train_segmenter.py"} <= files
    assert "fashionbg/background/sod.py" not in files


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_every_module_it_imports(name):
    stage = STAGES[name]
    declared = set().union(*(files_under(d) for d in code_deps(stage)))
    missing = sorted(str(p.relative_to(ROOT)) for p in closure(stage_module(stage)) - declared)
    assert not missing, f"dvc.yaml stage {name} lacks deps: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_no_code_it_does_not_run(name):
    stage = STAGES[name]
    runs = closure(stage_module(stage))
    extra = sorted(d for d in code_deps(stage) if not files_under(d) or files_under(d) - runs)
    assert not extra, f"dvc.yaml stage {name} depends on code it does not run: {extra}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_stage_imports_another(name):
    own = ROOT / "stages" / f"{name}.py"
    others = sorted(str(p.relative_to(ROOT)) for p in closure(stage_module(STAGES[name]))
                    if p.parent == ROOT / "stages" and p != own)
    assert not others, f"stage {name} imports other stages: {others}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_dependency_or_output_path_comes_from_a_param(name):
    """DVC hashes deps before the stage checks its params, so a path built from a param
    (data/prepared/${data.variant} with data.variant: ../..) would read outside the project."""
    stage = STAGES[name]
    paths = [d if isinstance(d, str) else next(iter(d))
             for d in stage.get("deps", []) + stage.get("outs", [])]
    assert not [p for p in paths if "${" in p], paths
    assert "${" not in stage["cmd"]
