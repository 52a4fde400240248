"""Where the study's cells run. One interface, two engines: DVC's own experiment queue (one
cell at a time) and Ray (every device of a machine or a cluster); `auto`, the default, takes Ray
wherever it has more than one device to fill. Both take the cells still to run, in the order
given, and return the (done, failed) names; both run each cell as the same DVC experiment, so
the report reads the same refs whichever engine ran them.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from fashionbg.core.errors import UserError
from fashionbg.core.params import load_params
from fashionbg.study.definition import Cell
from fashionbg.study.schedule import Capacity

STUDY_CACHE = Path(".cache/study")
LOCK = STUDY_CACHE / "lock"


class Engine(Protocol):
    """Used as `with engine:` around everything the study does with it (Ray stays connected)."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 trace: TracebackType | None) -> None: ...

    def capacity(self, todo: Sequence[Cell]) -> Capacity:
        """The devices the cells will share; UserError for a cell that can never run."""

    def run(self, todo: Sequence[Cell]) -> tuple[list[str], list[str]]:
        """Run the cells; (done, failed) names. Ctrl-C stops them and KeyboardInterrupt goes on."""


@dataclass(frozen=True)
class EngineOptions:
    """How the study is told where to run: all optional, all from the command line."""
    git_remote: str | None = None    # across machines: workers clone from and push to it
    dvc_remote: str | None = None    # across machines: workers pull and push outputs here
    cpus_per_cell: int = 1           # cores (and threads) a cell gets


class QueueEngine:
    """DVC's experiment queue with one worker (parallel workers have been seen to hang)."""

    def __init__(self, options: EngineOptions) -> None:
        if options.git_remote or options.dvc_remote:
            raise UserError("--git-remote / --dvc-remote need --engine ray (ENGINE=ray); the "
                            "queue runs every cell on this machine")

    def __enter__(self) -> QueueEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def capacity(self, todo: Sequence[Cell]) -> Capacity:
        """One cell at a time, on this machine: its GPUs bound a cell's train.nproc."""
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        params = load_params()
        for cell in todo:
            if gpus and nproc(cell, params) > gpus:
                raise UserError(f"cell {cell.name}: train.nproc = {nproc(cell, params)} but "
                                f"{gpus} GPU(s) are visible; set train.nproc to at most {gpus}")
        return Capacity(1, "queue slot", {})

    def run(self, todo: Sequence[Cell]) -> tuple[list[str], list[str]]:
        from fashionbg.study.runner import run_cells

        return run_cells(todo)


def nproc(cell: Cell, params: dict[str, Any]) -> int:
    """The training processes (GPUs) a cell asks for."""
    return int(cell.params.get("train.nproc", params["train"]["nproc"]))


def make_engine(name: str, options: EngineOptions) -> Engine:
    if name == "auto":
        name = auto_engine()
    if name == "queue":
        return QueueEngine(options)
    if name == "ray":   # Ray is imported only when it is asked for
        from fashionbg.study.ray_engine import RayEngine

        return RayEngine(options)
    raise UserError(f"ENGINE = {name!r} is not allowed; expected auto, queue or ray")


def auto_engine(gpus: int | None = None, cores: int | None = None) -> str:
    """ray where there are several devices to keep busy (a cluster at RAY_ADDRESS, more than one
    GPU, or more than one core on a machine without a GPU), else queue (one GPU, one core)."""
    if os.environ.get("RAY_ADDRESS"):
        return "ray"
    if gpus is None:
        import torch  # counts the cards without creating a CUDA context

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return "ray" if gpus > 1 or (gpus == 0 and cores > 1) else "queue"


@contextmanager
def study_lock(path: Path = LOCK) -> Iterator[None]:
    """One study at a time in a project: a second one refuses in one line naming the holder.
    The lock is the kernel's (flock), so a study that dies leaves no stale lock; the file is
    removed by the study that holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _locked(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _locked(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"another study is running in this project (PID {holder} holds "
                            f"{path}); wait for it to finish or stop it, then re-run") from None
        try:   # the holder may have removed the file between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def fetch_experiments(remote: str) -> None:
    """Every experiment on the Git remote, here: what `dvc exp pull --no-cache` fetches, so
    the cells other machines ran are not run again and the report sees them."""
    output("git", "fetch", "--quiet", remote, "refs/exps/*:refs/exps/*", "^refs/exps/celery/*")


def output(*cmd: str) -> str:
    """The stdout of a git or dvc command that must succeed; its last error line otherwise."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed: "
                        + (result.stderr.strip().splitlines() or ["no output"])[-1])
    return result.stdout
