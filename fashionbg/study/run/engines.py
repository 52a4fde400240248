"""Which engine runs the study's cells, by name: DVC's own experiment queue (one cell at a
time, runner.QueueEngine) or Ray (every device of a machine or a cluster, ray_engine.RayEngine);
`auto`, the default, takes Ray wherever it has more than one device to fill. Also the lock that
keeps one study at a time in a project. Both engines implement protocol.Engine and import
neither this registry nor each other.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fashionbg.core.errors import UserError
from fashionbg.study.experiments import STUDY_CACHE
from fashionbg.study.run.protocol import Engine, EngineOptions
from fashionbg.study.run.ray_engine import RayEngine  # Ray itself is imported when it starts
from fashionbg.study.run.runner import QueueEngine, visible_gpus

LOCK = STUDY_CACHE / "lock"
ENGINES: dict[str, Callable[[EngineOptions], Engine]] = {"queue": QueueEngine, "ray": RayEngine}


def make_engine(name: str, options: EngineOptions) -> Engine:
    if name == "auto":
        name = auto_engine()
    if name not in ENGINES:
        raise UserError(f"ENGINE = {name!r} is not allowed; expected auto, queue or ray")
    return ENGINES[name](options)


def auto_engine(gpus: int | None = None, cores: int | None = None) -> str:
    """ray where there are several devices to keep busy (a cluster at RAY_ADDRESS, more than one
    GPU, or more than one core on a machine without a GPU), else queue (one GPU, one core)."""
    if os.environ.get("RAY_ADDRESS"):
        return "ray"
    if gpus is None:
        gpus = visible_gpus()   # counts the cards without creating a CUDA context
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
