"""Running the cells of a preset through DVC's own experiment queue (the `queue` engine).

Each missing cell is queued with `dvc exp run --queue -n <cell> -S key=value … <evaluation
stage>` (only its task's stages run; DVC's run cache restores any stage already run with the
same inputs), then `dvc queue start -j 1` works through them. Cells whose experiment already
exists are not queued again, so adding a seed runs only the new cells. A failed cell is reported
with its log and does not stop the others.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from fashionbg.core.errors import UserError
from fashionbg.core.params import load_params
from fashionbg.study.experiments import existing_experiments, output
from fashionbg.study.plan.definition import Cell
from fashionbg.study.plan.schedule import Capacity
from fashionbg.study.run.progress import CellTime, Progress, time_summary
from fashionbg.study.run.protocol import EngineOptions, nproc
from fashionbg.study.run.upstream import run_upstreams
from fashionbg.study.run.workspace import (
    LOGS,
    NEUTRAL_IDENTITY,
    cell_job,
    dvc_cache_dir,
    identity_of,
    override,
    run_cell,
)

log = logging.getLogger("study")
POLL_SECONDS = 5
CLOCK_SECONDS = 0.5   # how often the executors' info files are read between two polls
# Where DVC's queue keeps each task's executor info (<stash rev>/<stash rev>.run, JSON with the
# experiment's name and its TaskStatus), rewritten in place at every change of state.
INFO_FILES = Path(".dvc/tmp/exps/run")
PREPARING, RUNNING, SUCCESS, FAILED, FINISHED = 1, 2, 3, 4, 6   # DVC's TaskStatus
# A name queued again after a failure shows twice; the more current state wins.
STATES = ("Failed", "Success", "Queued", "Running")
MISSING = "Missing"   # in no queue and without an experiment (yet)
LOST_POLLS = 6
# `dvc queue status` reads the queue's message files while a worker moves them: on a loaded
# machine one read in many fails ("ERROR: unexpected error"), so a poll is tried again.
STATUS_TRIES = 3
WORKER_START_SECONDS = 60   # from `dvc queue start` to its worker's process
STOP_SECONDS = 120   # how long Ctrl-C waits for the cells it stops to leave the queue
# A cell's stage that has not finished in this long is taken to be hung.
CELL_TIMEOUT = float(os.environ.get("FASHIONBG_CELL_TIMEOUT", 6 * 3600))


@dataclass(frozen=True)
class Shard:
    index: int   # 1-based
    count: int

    def take(self, cells: Sequence[Cell]) -> list[Cell]:
        """Every count-th cell starting at index: slices of similar cost for each machine."""
        return [c for i, c in enumerate(cells) if i % self.count == self.index - 1]


def parse_shard(text: str) -> Shard:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"SHARD = {text!r} is not allowed; expected i/N with 1 <= i <= N, "
                        "e.g. 2/4 for the second of four machines")
    return Shard(int(match[1]), int(match[2]))


def dvc(*args: str, check: bool = True) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True,
                            env=_environment())
    if check and result.returncode != 0:
        raise UserError(f"dvc {' '.join(args)} failed: {error_line(result.stderr)}")
    return result.stdout


def error_line(stderr: str) -> str:
    """DVC's own ERROR line, not the support link it prints after it."""
    lines = stderr.strip().splitlines() or ["no output"]
    return next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1])


def start_worker() -> None:
    """One queue worker (`-j 1`: parallel workers have been seen to hang), and never a second:
    DVC counts only workers registered with the queue, which a booting one on a loaded machine
    is not yet, so a worker is started only where no worker process of this project exists,
    and its process is waited for. The worker lives on in the background, so its output must
    not be a pipe we would wait on."""
    if queue_worker_running():      # still registering: it will take the queued cells
        return
    subprocess.run(["dvc", "queue", "start", "-j", "1"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=_environment(), check=True)
    deadline = time.monotonic() + WORKER_START_SECONDS
    while not queue_worker_running():
        if time.monotonic() > deadline:
            raise UserError(f"DVC's queue worker did not start within {WORKER_START_SECONDS} "
                            "s; see .dvc/tmp/exps/celery/dvc-exp-worker-1.out")
        time.sleep(0.2)


def queue_worker_running() -> bool:
    """Whether a `dvc exp queue-worker` of this project runs (registered with the queue or
    not yet): DVC starts it in the project's folder."""
    here = os.path.realpath(".")
    return any("queue-worker" in (p.info["cmdline"] or []) and p.info["cwd"] == here
               for p in psutil.process_iter(["cmdline", "cwd"]))


@functools.cache
def _environment() -> dict[str, str]:
    """DVC commits each experiment; a machine without a git identity gets a neutral one
    (looked up once, not at every poll of the queue)."""
    have = subprocess.run(["git", "config", "user.name"], capture_output=True).returncode == 0
    if have:
        return dict(os.environ)
    return {**identity_of(*NEUTRAL_IDENTITY), **os.environ}


def queue(cells: Sequence[Cell]) -> None:
    for cell in cells:
        sets = [arg for key, value in cell.overrides.items()
                for arg in ("-S", override(key, value))]
        dvc("exp", "run", "--queue", "-n", cell.name, *sets, cell.stage)


def queue_status() -> tuple[dict[str, str], int]:
    """Name → state of every task DVC's queue knows, and how many workers are alive."""
    for attempt in range(STATUS_TRIES):
        try:
            text = dvc("queue", "status")
            break
        except UserError:
            if attempt == STATUS_TRIES - 1:
                raise
            time.sleep(1)
    states: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-1] in STATES:
            old = states.get(parts[1], STATES[0])
            states[parts[1]] = max(old, parts[-1], key=STATES.index)
    workers = re.search(r"Worker status: (\d+) active, (\d+) idle", text)
    return states, (int(workers[1]) + int(workers[2])) if workers else 0


def cell_states(names: set[str], states: dict[str, str], experiments: dict[str, str],
                unseen: dict[str, int], workers: int) -> dict[str, str]:
    """Each cell's state. A task moving between DVC's queues can be missing from `dvc queue
    status` for a moment: it counts as pending until its experiment appears, and as failed
    (lost) only after it has stayed missing with no worker alive for LOST_POLLS polls."""
    out = {}
    for name in names:
        state = states.get(name) or ("Success" if name in experiments else MISSING)
        unseen[name] = unseen[name] + 1 if state == MISSING and not workers else 0
        out[name] = "Failed" if unseen[name] >= LOST_POLLS else state
    return out


def cells_to_run(cells: Sequence[Cell]) -> list[Cell]:
    """The cells that have no experiment yet (adding a seed runs only the new cells)."""
    present = existing_experiments()
    todo = [c for c in cells if c.name not in present]
    log.info("%d cells: %d already run, %d to run", len(cells), len(cells) - len(todo),
             len(todo))
    return todo


class Clock:
    """When each queued cell's DVC executor changed state: the mtime of its info file at the
    first read that shows a state (DVC rewrites the file in place at each change), so each time
    is exact or late by at most CLOCK_SECONDS (a state rewritten before it was first read)."""

    def __init__(self, since: float) -> None:
        self.since = since   # info files older than this are earlier runs'
        self.marks: dict[str, dict[int, float]] = {}   # stash rev → state → time
        self.names: dict[str, str] = {}                # stash rev → cell

    def read(self) -> None:
        for path in INFO_FILES.glob("*/*.run"):
            try:
                mtime = path.stat().st_mtime
                info = json.loads(path.read_text())
                unchanged = path.stat().st_mtime == mtime   # not rewritten while read
            except (OSError, ValueError):   # being written, or removed
                continue
            name, state = info.get("name"), info.get("status")
            if (unchanged and mtime >= self.since and isinstance(name, str)
                    and isinstance(state, int)):
                self.names[path.parent.name] = name
                self.marks.setdefault(path.parent.name, {}).setdefault(state, mtime)

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, reading the info files as it goes."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.read()
            time.sleep(min(CLOCK_SECONDS, left))

    def cell_time(self, name: str, devices: int) -> CellTime | None:
        """The cell's phases once its executor has ended (collected, or failed): from its
        start to RUNNING (DVC opened the clone), to SUCCESS or FAILED (stages and the
        experiment's commit), to FINISHED (the experiment fetched back here). A state that
        came and went between two reads takes the time of the next one seen."""
        revs = [r for r, n in self.names.items() if n == name]
        if not revs:
            return None
        marks = self.marks[max(revs, key=lambda r: max(self.marks[r].values()))]
        if FINISHED not in marks and FAILED not in marks:
            return None
        start = min(marks.values())
        end = max(marks.values())
        running = marks.get(RUNNING, marks.get(SUCCESS, marks.get(FAILED, end)))
        stopped = marks.get(SUCCESS, marks.get(FAILED, end))
        return CellTime(running - start, stopped - running, end - stopped, devices)


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
        gpus = visible_gpus()
        params = load_params()
        for cell in todo:
            if gpus and nproc(cell, params) > gpus:
                raise UserError(f"cell {cell.name}: train.nproc = {nproc(cell, params)} but "
                                f"{gpus} GPU(s) are visible; set train.nproc to at most {gpus}")
        return Capacity(1, "queue slot", {})

    def run(self, todo: Sequence[Cell]) -> tuple[list[str], list[str]]:
        return run_cells(todo)


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def devices_of(cells: Sequence[Cell]) -> tuple[dict[str, int], int, str]:
    """The devices each cell's stages hold, how many this machine has, and of which kind:
    its train.nproc GPUs, else every core (torch's threads, which the queue leaves as they
    are)."""
    gpus, params = visible_gpus(), load_params()
    if gpus:
        return {c.name: nproc(c, params) for c in cells}, gpus, "GPU"
    cores = len(os.sched_getaffinity(0))
    return dict.fromkeys((c.name for c in cells), cores), cores, "CPU"


def run_cells(todo: Sequence[Cell]) -> tuple[list[str], list[str]]:
    """Queue the cells and wait for them; (done, failed) names. On Ctrl-C the cells this run
    queued are taken off the queue, those running are stopped, and KeyboardInterrupt goes on."""
    if not todo:
        return [], []
    started = time.time()   # the time summary's wall time counts the upstream runs too
    queue_upstreams(todo)
    try:
        return _run(todo, started)
    except KeyboardInterrupt:
        stop({c.name for c in todo})
        raise


def queue_upstreams(cells: Sequence[Cell]) -> None:
    """The queue's upstream runs: here, one after another, from the last commit. With
    uncommitted changes they are left to the queue, which runs the working tree."""
    if output("git", "status", "--porcelain", "--untracked-files=no").strip():
        log.info("uncommitted changes: the first queued cell runs the upstream stages")
        return
    commit = output("git", "rev-parse", "HEAD").strip()
    jobs = [cell_job(c, commit, str(Path.cwd()), dvc_cache_dir()) for c in cells]
    run_upstreams(jobs, lambda todo: [run_cell(j) for j in todo], LOGS / "upstream")


def stop(names: set[str]) -> None:
    """Take `names` off DVC's queue: the queued ones removed, the running ones interrupted (the
    whole process group of each, so a stage's own workers stop too; an experiment is committed
    only when its run finishes, so none is left half-written), then the workers shut down. A
    second Ctrl-C meanwhile is ignored: half of this would leave a worker training unseen."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        log.info("stopping the cells this run queued")
        deadline = time.monotonic() + STOP_SECONDS
        killed: set[str] = set()
        while time.monotonic() < deadline:
            states, _ = queue_status()
            queued = sorted(n for n in names if states.get(n) == "Queued")
            running = {n for n in names if states.get(n) == "Running"}
            if queued:
                dvc("queue", "remove", *queued, check=False)
            if running - killed:
                dvc("queue", "kill", *sorted(running - killed), check=False)
                killed |= running
            if not (queued or running):
                break
            time.sleep(1)
        dvc("queue", "stop", check=False)
        failed = sorted(n for n in killed if queue_status()[0].get(n) == "Failed")
        if failed:   # the interrupted ones: their next run starts them afresh
            dvc("queue", "remove", *failed, check=False)
    except UserError as err:   # `dvc queue status` failed: say what may still run
        log.warning("could not stop every queued cell (%s); see `dvc queue status`", err)
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(todo: Sequence[Cell], started: float) -> tuple[list[str], list[str]]:
    devices, total, kind = devices_of(todo)
    clock = Clock(time.time())
    queue(todo)
    names = {c.name for c in todo}
    start, shown, unseen = time.monotonic(), None, dict.fromkeys(names, 0)
    timed: dict[str, CellTime] = {}
    with Progress(len(todo)) as bar:
        while True:
            states, workers = queue_status()
            mine = cell_states(names, states, existing_experiments(), unseen, workers)
            pending = [n for n, s in mine.items() if s in ("Queued", "Running", MISSING)]
            done = sorted(n for n, s in mine.items() if s == "Success")
            failed = sorted(n for n, s in mine.items() if s == "Failed")
            running = tuple(n for n, s in mine.items() if s == "Running")
            if (len(done), len(failed), running) != shown:
                log.info("[%d/%d] done, %d failed; running: %s", len(done), len(todo),
                         len(failed), ", ".join(running) or "-")
                shown = (len(done), len(failed), running)
            bar.update(len(done) + len(failed), dict.fromkeys(running, "queue"))
            log_times(clock, names - timed.keys(), devices, timed)
            if not pending:
                break
            if not workers:   # workers stop when the queue empties, and now and then before
                start_worker()
            if time.monotonic() - start > CELL_TIMEOUT * len(todo):
                raise UserError(f"the queue made no progress for too long; see `dvc queue "
                                f"status` and `dvc queue logs <name>` for {', '.join(pending[:3])}")
            clock.wait(POLL_SECONDS)
    clock.read()
    log_times(clock, names - timed.keys(), devices, timed)
    log.info(time_summary(list(timed.values()), time.time() - started, total, kind))
    for name in failed:
        tail = dvc("queue", "logs", name, check=False).strip().splitlines()[-3:]
        log.error("cell %s failed: %s (full log: dvc queue logs %s)", name,
                  " | ".join(tail) or "no log", name)
    return done, failed


def log_times(clock: Clock, names: set[str], devices: dict[str, int],
              timed: dict[str, CellTime]) -> None:
    """One line for each of `names` whose executor has ended, kept in `timed`."""
    for name in sorted(names):
        if (took := clock.cell_time(name, devices[name])) is not None:
            timed[name] = took
            log.info("cell %s ended (%s)", name, took.describe())
