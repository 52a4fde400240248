"""The study on Ray: each cell one Ray task that runs its DVC experiment in a workspace of its own
(fashionbg.study.run.workspace), with the resources it declares, on whichever node has them.

- GPUs in the cluster: a cell asks for `train.nproc` GPUs, and Ray's CUDA_VISIBLE_DEVICES keeps
  cells off each other's cards; CPU-only: a cell asks for `--cpus-per-cell` cores and runs
  with as many threads.
- A cell whose process dies by a signal, or whose worker or node is lost, runs again (at most
  ATTEMPTS times); a cell that fails by itself is reported once with its log, not retried.
- Without RAY_ADDRESS a Ray instance is started on this machine for the study and stopped after;
  with it, the study joins that cluster.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from fashionbg.core.errors import UserError
from fashionbg.core.params import load_params
from fashionbg.study.experiments import fetch_experiments, output
from fashionbg.study.plan.definition import Cell
from fashionbg.study.plan.schedule import Capacity
from fashionbg.study.run.progress import CellTime, Progress, time_summary
from fashionbg.study.run.protocol import EngineOptions, nproc
from fashionbg.study.run.upstream import run_upstreams
from fashionbg.study.run.workspace import (
    LOGS,
    WORKSPACES,
    CellJob,
    CellOutcome,
    WorkerLost,
    cell_job,
    clear_workspaces,
    dvc_cache_dir,
    run_cell,
)

log = logging.getLogger("study")
ATTEMPTS = 3              # runs of a cell whose worker died, before it counts as failed
STOP_SECONDS = 60         # how long Ctrl-C waits for the cancelled cells to clean up
# Unix socket paths are limited to 107 bytes; Ray puts its sockets this deep in its temp dir
# (session_<date>_<time>_<pid>/sockets/plasma_store).
RAY_SOCKET_DEPTH = 64
CONNECT_SECONDS = 10      # how long RAY_ADDRESS may take to accept a connection
JOIN_SECONDS = 60         # and Ray to join the cluster there, before the study gives up
WATCH_SECONDS = 10        # how often a running study looks at the cluster's nodes and memory
MEMORY_WARNING = 90       # % of this machine's memory in use that the study warns about
RAY_MEMORY_LIMIT = 95     # % at which Ray's memory monitor kills workers (its default)


class Board:
    """A Ray actor the cells tell where they run, for the progress bar."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}
        self.attempts: dict[str, int] = {}

    def started(self, name: str, where: str) -> None:
        self.where[name] = where
        self.attempts[name] = self.attempts.get(name, 0) + 1

    def finished(self, name: str) -> None:
        self.where.pop(name, None)

    def running(self) -> dict[str, str]:
        return dict(self.where)

    def attempt(self, name: str) -> int:
        return self.attempts.get(name, 0)


def cell_task(job: CellJob, board: Any) -> CellOutcome:
    """The body of a cell's Ray task: say where it runs, then run it."""
    import ray

    context = ray.get_runtime_context()
    gpus = ",".join(str(g) for g in context.get_accelerator_ids().get("GPU", []))
    board.started.remote(job.name, f"{context.get_node_id()[:6]}" + (f"/gpu{gpus}" if gpus else ""))
    try:
        return run_cell(job)
    finally:
        board.finished.remote(job.name)


class RayEngine:
    """Connected to its cluster from `with` to the end of the study, so that the cells are checked
    against the nodes they will run on before the pre-flight and before anything runs."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options   # checked where the command line is read (engine_options)
        self.params = load_params()
        self.started = time.time()
        self.seen: list[dict[str, str]] = []   # of every finished cell, for the time summary
        self._cluster: ExitStack | None = None
        self.ray: Any = None

    def __enter__(self) -> RayEngine:
        self._cluster = ExitStack()
        self.ray = self._cluster.enter_context(ray_cluster())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cluster is not None:
            self._cluster.close()

    def capacity(self, todo: Sequence[Cell]) -> Capacity:
        """The cluster's GPUs (or cores, on a cluster without GPUs) that the cells share; a cell
        no single node can hold is refused here, before anything runs (Ray would keep it
        pending forever)."""
        self.check_machines(self.ray)
        nodes = [n["Resources"] for n in self.ray.nodes() if n["Alive"]]
        gpus = sum(n.get("GPU", 0) for n in nodes)
        needs = {cell.name: self.resources(cell, gpus) for cell in todo}
        refuse_infeasible(needs, nodes, self.options.cpus_per_cell)
        if gpus:
            return Capacity(int(gpus), "GPU", {n: int(r["num_gpus"]) for n, r in needs.items()})
        cores = int(sum(n.get("CPU", 0) for n in nodes))
        return Capacity(cores, "core", {n: int(r["num_cpus"]) for n, r in needs.items()})

    def run(self, todo: Sequence[Cell]) -> tuple[list[str], list[str]]:
        """Submitted in the order given (the study's: longest first); Ray starts each cell as
        soon as a node has its resources."""
        if not todo:
            return [], []
        commit = study_commit()
        ray = self.ray
        gpus = ray.cluster_resources().get("GPU", 0)
        board = ray.remote(num_cpus=0)(Board).remote()
        task = ray.remote(max_retries=ATTEMPTS - 1, retry_exceptions=[WorkerLost])(cell_task)
        self.upstreams(ray, task, board, todo, commit, gpus)
        refs = {}
        for cell in todo:
            need = self.resources(cell, gpus)
            job = self.job(cell, commit, threads=int(need["num_cpus"]))
            refs[task.options(**need).remote(job, board)] = (job, need)
        log.info("%d cells on Ray: %s", len(todo), _describe(ray.cluster_resources()))
        try:
            return self._wait(ray, refs, board)
        except KeyboardInterrupt:
            _cancel(ray, list(refs))
            raise
        finally:
            clear_workspaces(WORKSPACES)

    def check_machines(self, ray: Any) -> None:
        """Workers on other machines cannot clone this project's folder nor share its cache."""
        machines = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        if len(machines) > 1 and not (self.options.git_remote and self.options.dvc_remote):
            raise UserError(f"the Ray cluster spans {len(machines)} machines: give GIT_REMOTE "
                            "and DVC_REMOTE (--git-remote, --dvc-remote) so that workers there "
                            "can clone the study and share its outputs")

    def resources(self, cell: Cell, gpus: float) -> dict[str, float]:
        processes = nproc(cell, self.params)
        if gpus:
            return {"num_gpus": processes, "num_cpus": self.options.cpus_per_cell}
        return {"num_cpus": max(processes, self.options.cpus_per_cell)}

    def job(self, cell: Cell, commit: str, threads: int) -> CellJob:
        remote = self.options.git_remote
        return cell_job(cell, commit, remote or str(Path.cwd()),
                        None if remote else dvc_cache_dir(),
                        dvc_remote=self.options.dvc_remote, threads=threads)

    def upstreams(self, ray: Any, task: Any, board: Any, todo: Sequence[Cell], commit: str,
                  gpus: float) -> None:
        """Each distinct upstream once, as Ray tasks (on a GPU, where there are some, for
        rembg), before any cell is submitted."""
        def run(jobs: list[CellJob]) -> list[CellOutcome]:
            need = {"num_gpus": 1 if gpus else 0, "num_cpus": self.options.cpus_per_cell}
            refs = [task.options(**need).remote(job, board) for job in jobs]
            try:
                return ray.get(refs)
            except KeyboardInterrupt:
                _cancel(ray, refs)
                raise
            except ray.exceptions.RayError as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
                raise UserError(f"the upstream stages were lost ({reason}); re-run the study") \
                    from None

        self.started = time.time()
        cells = [self.job(c, commit, threads=self.options.cpus_per_cell) for c in todo]
        run_upstreams(cells, run, LOGS / "upstream")

    def _wait(self, ray: Any, refs: dict[Any, tuple[CellJob, dict[str, float]]], board: Any
              ) -> tuple[list[str], list[str]]:
        done: list[str] = []
        failed: list[str] = []
        pending = list(refs)
        watch = Watch(ray)
        with Progress(len(refs)) as progress:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=2)
                for ref in ready:
                    ok = self._finished(ray, ref, refs[ref][0], board)
                    (done if ok else failed).append(refs[ref][0].name)
                    log.info("[%d/%d] done, %d failed", len(done), len(refs), len(failed))
                running = ray.get(board.running.remote())
                progress.update(len(done) + len(failed), running)
                watch.poll({refs[r][0].name: refs[r][1] for r in pending
                            if refs[r][0].name not in running})
        log.info(time_summary_of(self.seen, time.time() - self.started, ray.cluster_resources()))
        if self.options.git_remote:   # the experiments the workers pushed, for the report here
            fetch_experiments(self.options.git_remote)
        return sorted(done), sorted(failed)

    def _finished(self, ray: Any, ref: Any, job: CellJob, board: Any) -> bool:
        """Log how the cell ended; its log (what it ran with first, as JSON) in LOGS."""
        attempts = ray.get(board.attempt.remote(job.name))
        try:
            outcome: CellOutcome = ray.get(ref)
        except ray.exceptions.RayError as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            log.error("cell %s lost after %d attempts (%s); re-run the study, or by hand: %s",
                      job.name, attempts, reason, job.rerun)
            return False
        path = LOGS / f"{job.name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**outcome.seen, "attempts": attempts}) + "\n" + outcome.log)
        self.seen.append(outcome.seen)
        if outcome.ok:
            log.info("cell %s done on %s (CUDA_VISIBLE_DEVICES=%s, threads=%s, attempts=%d; "
                     "%s s before its stages, %s s in them, %s s after)", job.name,
                     outcome.seen["host"], outcome.seen["CUDA_VISIBLE_DEVICES"] or "-",
                     outcome.seen["OMP_NUM_THREADS"] or "-", attempts, outcome.seen["before_s"],
                     outcome.seen["stages_s"], outcome.seen["after_s"])
            return True
        tail = [line for line in outcome.log.strip().splitlines() if line.strip()][-3:]
        log.error("cell %s failed: %s (full log: %s; re-run: %s)", job.name,
                  " | ".join(tail) or "no log", path, job.rerun)
        return False


RESOURCE_NAMES = {"num_gpus": "GPU", "num_cpus": "CPU"}


def refuse_infeasible(needs: dict[str, dict[str, float]], nodes: list[dict[str, float]],
                      cpus_per_cell: int) -> None:
    """One line for the cells that no node can hold: what they ask, the most any node has,
    and what to change."""
    misfits = [name for name, need in needs.items() if not any(_fits(need, n) for n in nodes)]
    if not misfits:
        return
    need = needs[misfits[0]]
    most = {key: max((n.get(key, 0) for n in nodes), default=0) for key in ("GPU", "CPU")}
    fixes = []
    if need.get("num_gpus", 0) > most["GPU"]:
        fixes.append(f"train.nproc to at most {most['GPU']:g} (study.yaml or params.yaml)")
    if need["num_cpus"] > most["CPU"]:
        fixes.append(f"CPUS_PER_CELL (--cpus-per-cell) to at most {most['CPU']:g}"
                     if cpus_per_cell > most["CPU"]
                     else f"train.nproc to at most {most['CPU']:g} (study.yaml or params.yaml)")
    more = f" and {len(misfits) - 1} more" if len(misfits) > 1 else ""
    raise UserError(f"cell {misfits[0]}{more} asks Ray for {_amounts(need)} but no node of the "
                    f"cluster has that (the most on one node: {most['GPU']:g} GPU, "
                    f"{most['CPU']:g} CPU), so it would wait forever; set "
                    + " and ".join(fixes) + ", or add a bigger node")


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(RESOURCE_NAMES[key], 0) >= amount for key, amount in need.items())


def _amounts(need: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {RESOURCE_NAMES[key]}" for key, amount in need.items())


class Watch:
    """What Ray would say about a running study but does not print to it (log_to_driver is off
    so that the cells' output stays in their own logs): a node lost or joined, a waiting cell
    that no node alive can hold any more, memory pressure here. One line each, when it
    happens."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.nodes = self._alive()
        self.stuck: set[str] = set()
        self.pressed = False
        self.next = time.monotonic() + WATCH_SECONDS

    def _alive(self) -> dict[str, dict[str, Any]]:
        return {n["NodeID"]: n for n in self.ray.nodes() if n["Alive"]}

    def poll(self, waiting: dict[str, dict[str, float]]) -> None:
        """Every WATCH_SECONDS: `waiting` is each cell not started yet, with what it asks."""
        if time.monotonic() < self.next:
            return
        self.next = time.monotonic() + WATCH_SECONDS
        alive = self._alive()
        for node in self.nodes.keys() - alive.keys():
            log.warning("Ray: node %s (%s, %s) lost; the cells it ran run again elsewhere "
                        "(at most %d attempts)", node[:6], self.nodes[node]["NodeManagerAddress"],
                        _describe(self.nodes[node]["Resources"]), ATTEMPTS)
        for node in alive.keys() - self.nodes.keys():
            log.info("Ray: node %s (%s, %s) joined", node[:6], alive[node]["NodeManagerAddress"],
                     _describe(alive[node]["Resources"]))
        self.nodes = alive
        for name, need in waiting.items():
            if name not in self.stuck and not any(_fits(need, n["Resources"])
                                                  for n in alive.values()):
                self.stuck.add(name)
                log.warning("Ray: cell %s asks for %s, which no node alive has; it waits until "
                            "such a node joins (Ctrl-C stops the study)", name, _amounts(need))
        self._memory()

    def _memory(self) -> None:
        import psutil

        used = psutil.virtual_memory().percent
        if used >= MEMORY_WARNING and not self.pressed:
            log.warning("Ray: memory %.0f %% used on this machine; Ray kills a cell's worker "
                        "above %.0f %% (its cell then runs again): lower the batch sizes or run "
                        "fewer cells at once", used, RAY_MEMORY_LIMIT)
        self.pressed = used >= MEMORY_WARNING


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Ctrl-C: every cell cancelled (a running one kills its process group and removes its
    workspace), those that do not stop in time forced."""
    log.info("stopping the cells of this run")
    for ref in refs:
        ray.cancel(ref)
    _, left = ray.wait(refs, num_returns=len(refs), timeout=STOP_SECONDS)
    for ref in left:
        ray.cancel(ref, force=True)


def time_summary_of(seen: list[dict[str, str]], wall: float,
                    resources: dict[str, float]) -> str:
    """time_summary over the cells' `seen` records, on the cluster's GPUs (else CPU cores)."""
    kind = "GPU" if resources.get("GPU") else "CPU"
    return time_summary([cell_time(s, kind) for s in seen], wall, resources.get(kind, 1), kind)


def cell_time(seen: dict[str, str], kind: str) -> CellTime:
    gpus = seen["CUDA_VISIBLE_DEVICES"]
    devices = len(gpus.split(",")) if kind == "GPU" and gpus else int(seen["OMP_NUM_THREADS"] or 1)
    return CellTime(float(seen["before_s"]), float(seen["stages_s"]), float(seen["after_s"]),
                    devices)


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


@contextmanager
def ray_cluster() -> Iterator[Any]:
    """Ray connected: to RAY_ADDRESS's cluster, or to one started here for the study (its
    files in ray_temp_dir) and stopped after."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"   # no telemetry leaves the machine
    address = os.environ.get("RAY_ADDRESS")
    temp = None if address else ray_temp_dir(Path.cwd())
    if not address:
        local_token()   # before Ray is imported: it reads its settings then
    import ray

    if address:
        reachable(address)
    try:
        if address:
            join(ray, address)
        else:
            assert temp is not None  # set above wherever there is no address
            temp.mkdir(parents=True, exist_ok=True)
            ray.init(address="local", _temp_dir=str(temp), include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UserError(f"RAY_ADDRESS = {address!r}: could not join the Ray cluster ({err}); "
                        "start it with `ray start --head` or unset RAY_ADDRESS") from None
    try:
        yield ray
    finally:
        ray.shutdown()
        if temp and not temp.is_relative_to(Path.cwd()):   # nothing left outside the project
            shutil.rmtree(temp, ignore_errors=True)


def reachable(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """RAY_ADDRESS answers within `seconds`: Ray itself retries an address where nothing
    listens for ever."""
    if address in ("auto", "local"):   # Ray's own lookups, which fail at once
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"RAY_ADDRESS = {address!r} is not allowed; expected host:port (the "
                        "head's GCS address, e.g. 10.0.0.5:6379), ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as err:
        raise UserError(f"RAY_ADDRESS = {address!r}: nothing answered at {host}:{port} within "
                        f"{seconds:g} s ({err.strerror or err}); start the cluster there with "
                        "`ray start --head`, or unset RAY_ADDRESS to run on this machine") from None


def join(ray: Any, address: str, seconds: float | None = None) -> None:
    """ray.init for RAY_ADDRESS, given up after `seconds` (JOIN_SECONDS): where something answers
    that is not a Ray head, Ray retries for ever. The attempt runs in a daemon thread, which
    goes with the process when the study refuses."""
    seconds = JOIN_SECONDS if seconds is None else seconds
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except BaseException as err:   # handed to the caller's thread
            outcome.append(err)
        else:
            outcome.append(None)

    thread = threading.Thread(target=connect, name="ray-join", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise UserError(f"RAY_ADDRESS = {address!r}: no Ray cluster answered there within "
                        f"{seconds:g} s; check the head's address and port (`ray status` on the "
                        "head), or unset RAY_ADDRESS to run on this machine")
    if outcome[0] is not None:
        raise outcome[0]


def local_token() -> None:
    """Token authentication for the Ray started here, with a token that lives in this process
    and its children only: left to itself Ray would write one to ~/.ray/auth_token."""
    if not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"} & set(os.environ):
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))


def ray_temp_dir(project: Path) -> Path:
    """Where a Ray started for the study keeps its files: .cache/ray in the project, unless that
    path is too long for Ray's Unix sockets; then a short folder of the system's temp dir, named
    for the project (and removed after the study)."""
    inside = (project / ".cache/ray").resolve()
    if len(str(inside)) + RAY_SOCKET_DEPTH <= 107:
        return inside
    digest = hashlib.sha256(str(inside).encode()).hexdigest()[:8]
    log.info("Ray's files go to the system's temp dir: %s is too deep for its sockets", inside)
    return Path(tempfile.gettempdir()) / f"fashionbg-ray-{digest}"


def study_commit() -> str:
    """The commit every cell runs from; uncommitted changes would not reach the workspaces."""
    changed = output("git", "status", "--porcelain", "--untracked-files=no").splitlines()
    if changed:
        files = ", ".join(line[3:] for line in changed[:3]) + (" …" if len(changed) > 3 else "")
        raise UserError(f"uncommitted changes ({files}): the Ray engine runs every cell from "
                        "the last commit; commit or stash them first")
    return output("git", "rev-parse", "HEAD").strip()
