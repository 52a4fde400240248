"""One cell run in a workspace of its own, never the user's working tree: a clone of the study's
commit whose DVC cache is the project's (on this machine) or whose DVC remote is the study's
(on any machine), so the run cache restores every upstream stage instead of recomputing it.
The data come out of the cache as links (.dvc/config's cache.type), so a workspace holds only
what its cell writes; DVC's site cache and the rembg masks stay inside the project.
The finished experiment goes back as its git ref; the workspace is removed whatever happens.

This module knows nothing of Ray nor of DVC's queue: an engine builds a cell's job here
(`cell_job`: its overrides in DVC's grammar, the study's git identity, this machine's folders)
and calls `run_cell` wherever the cell runs.
"""
from __future__ import annotations

import ctypes
import itertools
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from fashionbg.background.workers import MASK_CACHE_ENV
from fashionbg.core import paths
from fashionbg.core.errors import UserError
from fashionbg.study.experiments import STUDY_CACHE, output
from fashionbg.study.plan.definition import Cell

LOG_TAIL = 500          # lines of a cell's log that travel back to the study
# How DVC reports a stage that died by a signal (it then fails itself, with a code of its own):
# "failed to run: python -m stages.x, exited with -9", or 128 + N where a shell or our
# launcher said it ("stopped by SIGTERM").
STAGE_KILLED = re.compile(r"failed to run: .*, exited with (-\d+|1(?:29|37|43))\s*$", re.M)
SITE_CACHE = ".dvc/tmp/site"   # DVC's site cache, in the workspace (else /var/tmp/dvc/repo/<md5>)
PR_SET_PDEATHSIG = 1    # prctl(2): the kernel signals a child when its parent dies
WORKSPACES = STUDY_CACHE / "workspaces"
LOGS = STUDY_CACHE / "logs"
NEUTRAL_IDENTITY = ("fashionbg study", "study@localhost")   # for a machine without one


class WorkerLost(Exception):
    """The cell's process died by a signal (SIGKILL, the OOM killer, a node going away): not
    the cell's own fault, so the engine runs it again in a fresh workspace."""


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs to run one cell, on this machine or another."""
    name: str
    stage: str
    sets: tuple[str, ...]        # the `-S key=value` overrides, already in DVC's grammar
    commit: str                  # the study's commit: every cell runs from it
    repo: str                    # the project to clone (a path here, or the Git remote)
    workspaces: str              # where workspaces are made on this machine
    cache: str | None = None     # the project's DVC cache (one machine)
    dvc_remote: str | None = None  # the study's DVC remote (any machine)
    threads: int | None = None   # CPU threads the cell may use (None: the stage's own choice)
    env: dict[str, str] = field(default_factory=dict)
    mask_cache: str | None = None  # the rembg mask cache every workspace on a machine shares
    publish: bool = True         # send the experiment back (an upstream run sends only its cache)

    @property
    def command(self) -> list[str]:
        return ["dvc", "exp", "run", "-n", self.name,
                *[a for s in self.sets for a in ("-S", s)], self.stage]

    @property
    def rerun(self) -> str:
        """The exact command that re-runs the cell by hand, in the project."""
        return shlex.join(self.command)


def cell_job(cell: Cell, commit: str, repo: str, cache: str | None, **more: Any) -> CellJob:
    """The job of one cell at the study's commit, with the study's git identity and this
    machine's workspaces and mask cache; `more` as CellJob takes it (dvc_remote, threads)."""
    return CellJob(name=cell.name, stage=cell.stage, commit=commit, repo=repo, cache=cache,
                   sets=tuple(override(k, v) for k, v in cell.overrides.items()),
                   workspaces=str(workspace_root()), env=identity(),
                   mask_cache=mask_cache_dir(), **more)


def override(key: str, value: object) -> str:
    """`-S key=value` in the Hydra override grammar DVC parses: strings always quoted, so a
    path with commas, quotes, `=` or braces arrives as it is (never a sweep or a syntax error)."""
    return f"{key}={hydra_value(key, value)}"


def hydra_value(key: str, value: object) -> str:
    if isinstance(value, str):
        if "${" in value:   # OmegaConf would resolve it (even ${oc.env:...}) inside quotes
            raise UserError(f"{key} = {value!r} is not allowed; a value may not hold '${{'")
        # a backslash escapes only a quote, or a run of backslashes before the closing quote
        body = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", value)
        return "'" + re.sub(r"(\\+)$", lambda m: m[1] * 2, body) + "'"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hydra_value(key, v) for v in value) + "]"
    if isinstance(value, dict) and all(isinstance(k, str) and k.isidentifier() for k in value):
        return "{" + ", ".join(f"{k}: {hydra_value(key, v)}" for k, v in value.items()) + "}"
    raise UserError(f"{key} = {value!r} is not allowed; expected a string, number, boolean, "
                    "null, or a list or mapping of them")


def identity_of(name: str, email: str) -> dict[str, str]:
    """The git author and committer variables of one identity."""
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}


def identity() -> dict[str, str]:
    """The study's git identity for every cell's experiment commit, wherever it runs (a worker
    machine may have none): this project's, or a neutral one."""
    def config(key: str, default: str) -> str:
        found = subprocess.run(["git", "config", key], capture_output=True, text=True)
        return found.stdout.strip() or default

    name = os.environ.get("GIT_AUTHOR_NAME") or config("user.name", NEUTRAL_IDENTITY[0])
    email = os.environ.get("GIT_AUTHOR_EMAIL") or config("user.email", NEUTRAL_IDENTITY[1])
    return identity_of(name, email)


def workspace_root() -> Path:
    return (Path.cwd() / WORKSPACES).resolve()


def dvc_cache_dir() -> str:
    return str((Path.cwd() / output("dvc", "cache", "dir").strip()).resolve())


def mask_cache_dir() -> str:
    """The project's rembg mask cache, shared by every workspace on this machine (and at the same
    path on the others)."""
    return str((Path.cwd() / paths.SOD_CACHE).resolve())


@dataclass(frozen=True)
class CellOutcome:
    name: str
    ok: bool
    log: str                     # the tail of the cell's log
    seen: dict[str, str]         # what the cell ran with: host, devices, threads, when


def run_cell(job: CellJob) -> CellOutcome:
    """Run `job` in a fresh workspace; a failure of the cell itself is an outcome, a death by
    a signal raises WorkerLost. Leftovers of an earlier attempt of the same cell are cleared
    first (a killed worker cannot clean up after itself)."""
    root = Path(job.workspaces)
    clear_workspaces(root, job.name)
    ws = root / f"{job.name}-{uuid.uuid4().hex[:8]}"
    env = {**cell_environment(job), "DVC_SITE_CACHE_DIR": str(ws / SITE_CACHE)}
    log = ws.parent / f"{ws.name}.log"
    marks = [time.time()]   # start, first stage, stages done, end: where the cell's time went
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            code = _prepare(job, ws, env, out)
            marks.append(time.time())
            code = code or _run(job.command, ws, env, out) or _run(
                [sys.executable, "-m", "fashionbg.study.run.cache_check", job.stage], ws, env, out)
            marks.append(time.time())
            if code == 0:
                code = _publish(job, ws, env, out)
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-LOG_TAIL:])
    finally:
        remove(ws)
        log.unlink(missing_ok=True)
    if lost := killed(code, tail):
        raise WorkerLost(f"cell {job.name}: {lost}")
    return CellOutcome(job.name, code == 0, tail, seen(env, marks + [time.time()]))


def killed(code: int, log: str) -> str | None:
    """Which process of the cell died by which signal, or None: a signal is not the cell's
    verdict (the OOM killer, a scheduler, a node going away), whether it hit DVC itself (a
    negative code) or the stage DVC ran (DVC's own failure, its log naming the signal)."""
    if code < 0:
        who, number = "its dvc process", -code
    elif code > 0 and (match := STAGE_KILLED.findall(log)):
        who, number = "its stage", abs(int(match[-1])) % 128
    else:
        return None
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return f"{who} was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


def seen(env: dict[str, str], marks: list[float]) -> dict[str, str]:
    """Where the cell ran and when: its seconds before its first stage (clone, checkout), in
    its stages (`dvc exp run`) and after them (publish, removing the workspace)."""
    before, stages, after = (b - a for a, b in itertools.pairwise(marks))
    return {"host": os.uname().nodename, "pid": str(os.getpid()),
            "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", ""),
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", ""),
            "started": f"{marks[0]:.3f}", "ended": f"{marks[-1]:.3f}",
            "before_s": f"{before:.1f}", "stages_s": f"{stages:.1f}", "after_s": f"{after:.1f}"}


def cell_environment(job: CellJob) -> dict[str, str]:
    """This interpreter's tools first on PATH (stages run `python -m …`), the study's git
    identity, and as many threads as the cell was given cores (Ray would leave torch one
    thread; two cells on two cores must not fight over them)."""
    env = {**os.environ, **job.env, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if job.mask_cache:
        env[MASK_CACHE_ENV] = job.mask_cache
    if job.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(job.threads)
    return env


def _prepare(job: CellJob, ws: Path, env: dict[str, str], out: IO[str]) -> int:
    """Clone the study's commit and point its DVC at the shared cache or the remote."""
    steps = [["git", "clone", "--quiet", "--no-checkout", *(["--shared"] if job.cache else []),
              job.repo, str(ws)],
             ["git", "-C", str(ws), "checkout", "--quiet", "--detach", job.commit]]
    if job.cache:
        steps.append(_dvc(ws, "config", "--local", "cache.dir", job.cache))
    if job.dvc_remote:
        steps += [_dvc(ws, "remote", "add", "--local", "--default", "study", job.dvc_remote),
                  _dvc(ws, "pull", "--run-cache", "--allow-missing", "--quiet", "--with-deps",
                       job.stage)]
    for step in steps:
        if code := _run(step, ws.parent, env, out):
            return code
    return 0


def _publish(job: CellJob, ws: Path, env: dict[str, str], out: IO[str]) -> int:
    """The experiment's ref back to the project (or the Git remote) it was cloned from: what
    `dvc exp push` sends. Its outputs are already in the shared cache on one machine; across
    machines they and the run cache go to the DVC remote first."""
    steps = [_dvc(ws, "push", "--run-cache", "--quiet")] if job.dvc_remote else []
    if job.publish:
        refs = experiment_refs(ws)
        if not refs:
            out.write("error: the cell's `dvc exp run` left no experiment to publish\n")
            return 1
        steps.append(["git", "-C", str(ws), "push", "--quiet", job.repo,
                      *(f"{ref}:{ref}" for ref in refs)])
    for step in steps:
        if code := _run(step, ws, env, out):
            return code
    return 0


def experiment_refs(ws: Path) -> list[str]:
    """The experiments' refs in a workspace, without DVC's scratch refs under refs/exps/exec/:
    two cells pushing their EXEC_HEAD into the project at once collide on its lock ("failed
    to update ref", seen with two Ray cells), and the project has no use for it."""
    listed = subprocess.run(["git", "-C", str(ws), "for-each-ref", "--format=%(refname)",
                             "refs/exps"], capture_output=True, text=True).stdout.split()
    return [ref for ref in listed if not ref.startswith("refs/exps/exec/")]


def _dvc(ws: Path, *args: str) -> list[str]:
    return ["dvc", "--cd", str(ws), *args]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], out: IO[str]) -> int:
    """Run one step in its own process group, the group killed with it: a stage's own workers
    never outlive the cell (also when this process is cancelled or dies). DVC runs under this
    interpreter, whatever the worker's PATH."""
    if cmd[0] == "dvc":
        cmd = [sys.executable, "-m", "dvc", *cmd[1:]]
    out.write(f"$ {shlex.join(cmd)}\n")
    out.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent)
    try:
        return proc.wait()
    finally:
        kill_group(proc.pid)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):   # not Linux: the group is still killed on the way out
        pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def clear_workspaces(root: Path, name: str | None = None) -> None:
    """Remove the workspaces (of cell `name`, or all) under `root`, with any process still
    working in one: what a worker killed mid-cell leaves behind."""
    if not root.is_dir():
        return
    stale = [p for p in root.iterdir() if p.is_dir() and (name is None or _of(p, name))]
    for ws in stale:
        remove(ws)
        (ws.parent / f"{ws.name}.log").unlink(missing_ok=True)


def _of(ws: Path, name: str) -> bool:
    stem, _, suffix = ws.name.rpartition("-")
    return stem == name and len(suffix) == 8


def remove(ws: Path) -> None:
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info["cwd"] or ""
        if cwd == str(ws) or cwd.startswith(f"{ws}{os.sep}"):
            try:
                proc.kill()
                proc.wait(10)
            except psutil.Error:
                pass
    shutil.rmtree(ws, ignore_errors=True)
