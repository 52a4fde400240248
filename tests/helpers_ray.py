"""What the Ray study's tests and its benchmarks both need: a tiny preset, the `dvc exp run` of
a running cell, found by its workspace, and the per-cell records the study writes."""
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml

WORKSPACES = ".cache/study/workspaces"
UPSTREAM = ("download", "remove_background", "prepare")


def tiny_preset(project: Path, seeds: list[int]) -> None:
    """The preset `tiny`: one arm, both variants, these seeds (2 × len(seeds) cells)."""
    definition = yaml.safe_load((project / "study.yaml").read_text())
    definition["presets"]["tiny"] = {"about": "one arm on a tiny demo", "seeds": seeds,
                                     "arms": {"shallow": {}}}
    (project / "study.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    (project / "README.md").write_text("<!-- study:begin -->\n<!-- study:end -->\n")


@contextmanager
def study_running(project: Path, env: dict[str, str], *args: str,
                  **popen: object) -> Iterator[subprocess.Popen]:
    """`python -m fashionbg.study run --preset tiny <args>` in the background, its output
    piped; killed if the test leaves it running."""
    proc = subprocess.Popen([sys.executable, "-m", "fashionbg.study", "run", "--preset", "tiny",
                             *args], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def finished(proc: subprocess.Popen, cells: int, timeout: float) -> str:
    """The study's output once it ended with every one of its `cells` done."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    assert f"[{cells}/{cells}] done, 0 failed" in out, out
    return out


def training_cell(project: Path, timeout: float = 600, cell: str | None = None,
                  other_than: str | None = None) -> psutil.Process | None:
    """The `dvc exp run` of a cell of `project` (of `cell`, or of any but `other_than`, if
    given) once its training stage runs (None if none got there within `timeout` seconds)."""
    deadline, workspaces = time.monotonic() + timeout, str(project / WORKSPACES)
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                cwd = proc.info["cwd"] or ""
                if ("exp run" in cmd and cwd.startswith(workspaces)
                        and cell in (None, cell_of(proc)) and other_than != cell_of(proc)):
                    children = [" ".join(c.cmdline()) for c in proc.children(recursive=True)]
                    if any("stages.train_" in c for c in children):
                        return proc
            except psutil.Error:
                continue
        time.sleep(0.5)
    return None


def cell_of(proc: psutil.Process) -> str:
    """The cell whose workspace (<cell>-<8 hex digits>) a process works in."""
    return Path(proc.cwd()).name.rsplit("-", 1)[0]


def cell_logs(project: Path) -> dict[str, tuple[dict, str]]:
    """Per cell: what it ran with (the first line of its log, JSON) and its log."""
    out = {}
    for path in (project / ".cache/study/logs").glob("*.log"):
        first, _, rest = path.read_text().partition("\n")
        out[path.stem] = (json.loads(first), rest)
    return out


def stage_runs(project: Path) -> dict[str, int]:
    """How many times each stage ran, from DVC's own output in every log the study kept (its
    cells' and its upstream runs')."""
    counts: dict[str, int] = {}
    for path in (project / ".cache/study/logs").rglob("*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("Running stage '"):
                stage = line.split("'")[1]
                counts[stage] = counts.get(stage, 0) + 1
    return counts


def unlinked_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` that are not links (one name, no symlink)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(parent, name))
            except FileNotFoundError:   # the workspace is going away
                continue
            if st.st_nlink == 1 and not os.path.islink(os.path.join(parent, name)):
                total += st.st_size
    return total
