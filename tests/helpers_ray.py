"""What the Ray study's tests and its benchmark both need: the `dvc exp run` of a running cell,
found by its workspace, and the per-cell records the study writes."""
import json
import time
from pathlib import Path

import psutil

WORKSPACES = ".cache/study/workspaces"


def training_cell(project: Path, timeout: float = 600) -> psutil.Process | None:
    """The `dvc exp run` of a cell of `project` once its training stage runs (None if none
    got there within `timeout` seconds)."""
    deadline, workspaces = time.monotonic() + timeout, str(project / WORKSPACES)
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if "exp run" in cmd and (proc.info["cwd"] or "").startswith(workspaces):
                    children = [" ".join(c.cmdline()) for c in proc.children(recursive=True)]
                    if any("stages.train_" in c for c in children):
                        return proc
            except psutil.Error:
                continue
        time.sleep(0.5)
    return None


def cell_logs(project: Path) -> dict[str, tuple[dict, str]]:
    """Per cell: what it ran with (the first line of its log, JSON) and its log."""
    out = {}
    for path in (project / ".cache/study/logs").glob("*.log"):
        first, _, rest = path.read_text().partition("\n")
        out[path.stem] = (json.loads(first), rest)
    return out
