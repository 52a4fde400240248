"""The parts of the study's engines that need no cluster: the one-study-at-a-time lock (held by
a real second process), choosing an engine, the command that re-runs a cell, clearing what
a killed cell left behind (a real process working in a stale workspace), a stage killed by a
signal, one queue worker, which cells share an upstream run, the summary of where the cells'
time went, refusing a cell that no node can hold, and giving up on a RAY_ADDRESS where nothing
answers."""
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fashionbg.core.errors import UserError
from fashionbg.study.run import runner
from fashionbg.study.run.engines import auto_engine, make_engine, study_lock
from fashionbg.study.run.protocol import EngineOptions
from fashionbg.study.run.ray_engine import (
    CONNECT_SECONDS,
    ray_cluster,
    reachable,
    refuse_infeasible,
    time_summary_of,
)
from fashionbg.study.run.runner import FAILED, FINISHED, PREPARING, RUNNING, SUCCESS, Clock
from fashionbg.study.run.upstream import upstream_jobs, upstream_params
from fashionbg.study.run.workspace import CellJob, clear_workspaces, experiment_refs

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from pathlib import Path
from fashionbg.study.run.engines import study_lock
with study_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def holder(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_study_refuses_in_one_line_naming_the_holder(tmp_path):
    lock = tmp_path / ".cache/study/lock"
    proc = holder(lock)
    try:
        with pytest.raises(UserError) as err:
            with study_lock(lock):
                pass
        assert str(err.value) == (f"another study is running in this project (PID {proc.pid} "
                                  f"holds {lock}); wait for it to finish or stop it, then re-run")
    finally:
        proc.kill()
        proc.wait()
    with study_lock(lock):          # a killed holder leaves no stale lock
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


def test_an_unknown_engine_or_remotes_without_ray_are_refused():
    with pytest.raises(UserError, match="ENGINE = 'spark' is not allowed; expected auto, queue "
                                        "or ray"):
        make_engine("spark", EngineOptions())
    with pytest.raises(UserError, match="--git-remote / --dvc-remote need --engine ray"):
        make_engine("queue", EngineOptions(git_remote="/srv/git/fashionbg.git"))


def test_the_queue_path_does_not_load_ray():
    code = ("import sys; import fashionbg.study.__main__; "
            "from fashionbg.study.run.engines import make_engine; "
            "from fashionbg.study.run.protocol import EngineOptions; "
            "make_engine('queue', EngineOptions()); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_rerun_command_is_the_cells_exact_dvc_command():
    job = CellJob(name="shallow-rembg-s0-abc123", stage="evaluate_classifier",
                  sets=("data.variant='rembg'", "data.path='/d/a b.zip'"), commit="0" * 40,
                  repo="/p", workspaces="/p/.cache/study/workspaces")
    assert shlex.split(job.rerun) == [
        "dvc", "exp", "run", "-n", "shallow-rembg-s0-abc123", "-S", "data.variant='rembg'",
        "-S", "data.path='/d/a b.zip'", "evaluate_classifier"]


def test_clearing_a_cells_workspaces_stops_what_still_runs_there(tmp_path):
    stale, other = tmp_path / "cell-a-0123abcd", tmp_path / "cell-b-4567cdef"
    for ws in (stale, other):
        (ws / "sub").mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "120"], cwd=stale / "sub")
    try:
        time.sleep(0.2)
        clear_workspaces(tmp_path, "cell-a")
        proc.wait(timeout=10)       # killed (and reaped by the clearing), not asleep for 120 s
        assert not stale.exists() and other.exists()
        clear_workspaces(tmp_path)
        assert not other.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


STAGE_DIES = 'import os, signal, sys; os.kill(os.getpid(), getattr(signal, sys.argv[1]))'


@pytest.mark.parametrize("how, lost", [
    ("SIGKILL", "its stage was killed by SIGKILL (out of memory?)"),
    ("SIGTERM", "its stage was killed by SIGTERM"),
    ("exit 3", None),   # a stage that fails on its own: the cell's verdict
    ("ok", None),       # a folder output, in the cache: the check after DVC passes
])
def test_a_stage_killed_by_a_signal_is_a_lost_worker_end_to_end(tmp_path, how, lost):
    """A real `dvc exp run` in a real workspace whose stage dies by a signal: DVC fails with a
    code of its own, and the cell is lost (run again by the engine), not failed."""
    from helpers_project import project_env

    from fashionbg.study.run.workspace import WorkerLost, run_cell

    repo = tmp_path / "repo"
    repo.mkdir()
    cmd = {"exit 3": "python -c 'raise SystemExit(3)'",
           "ok": "mkdir -p out && echo a > out/a\n    outs: [out]"}.get(
               how, f"python -c '{STAGE_DIES}' {how}")
    (repo / "dvc.yaml").write_text(f"stages:\n  die:\n    cmd: {cmd}\n")
    (repo / "params.yaml").write_text("x: 1\n")
    env = project_env()
    for step in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                 ["git", "add", "-A"], ["git", "commit", "-qm", "stage"]):
        subprocess.run(step, cwd=repo, env=env, check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout.strip()
    job = CellJob(name="cell", stage="die", sets=(), commit=commit, repo=str(repo),
                  workspaces=str(tmp_path / "ws"), cache=str(repo / ".dvc/cache"),
                  env={k: v for k, v in env.items() if k.startswith("GIT_")})
    if lost:
        with pytest.raises(WorkerLost, match=re.escape(f"cell cell: {lost}") + "$"):
            run_cell(job)
    else:
        outcome = run_cell(job)
        assert outcome.ok == (how == "ok"), outcome.log
        assert ("exited with 3" if how == "exit 3" else "-m fashionbg.study.run.cache_check"
                ) in outcome.log, outcome.log
    assert not list((tmp_path / "ws").iterdir())


@pytest.mark.timeout(300)
def test_a_second_queue_worker_is_never_started_end_to_end(tmp_path, monkeypatch):
    """`start_worker` twice in a row, the first worker not yet registered with DVC's queue
    (what a loaded machine shows for seconds): one worker process, the second call a no-op."""
    import psutil
    from helpers_project import project_env

    from fashionbg.study.run import runner

    for step in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                 ["git", "commit", "-qm", "dvc", "--allow-empty"]):
        subprocess.run(step, cwd=tmp_path, env=project_env(), check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    for name, value in project_env().items():
        monkeypatch.setenv(name, value)
    runner._environment.cache_clear()

    def workers() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline", "cwd"])
                if "queue-worker" in (p.info["cmdline"] or []) and p.info["cwd"] == str(tmp_path)]

    try:
        runner.start_worker()
        runner.start_worker()
        time.sleep(3)       # time for a second one to show
        assert len(workers()) == 1
    finally:
        subprocess.run([sys.executable, "-m", "dvc", "queue", "stop", "--kill"], cwd=tmp_path,
                       env=project_env(), capture_output=True, timeout=60)
        _, alive = psutil.wait_procs(workers(), timeout=30)
        for proc in alive:
            proc.kill()
    runner._environment.cache_clear()


def cell(name: str, *sets: str, stage: str = "evaluate_classifier") -> CellJob:
    return CellJob(name=name, stage=stage, sets=sets, commit="0" * 40, repo="/p",
                   workspaces="/p/.cache/study/workspaces")


def test_the_upstream_params_are_those_of_prepare_and_the_stages_before_it():
    params = upstream_params(ROOT / "dvc.yaml")
    assert {"data.source", "data.demo", "background.model", "data.image_size",
            "background.fill"} <= params
    assert not {"data.variant", "classify", "segment", "train", "evaluate"} & params


def test_cells_that_share_their_data_params_share_one_upstream_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    cells = [cell("a", "data.variant='original'", "classify.seed=0"),
             cell("b", "data.variant='rembg'", "classify.seed=1", "classify.arch='resnet18'"),
             cell("c", "data.variant='rembg'", "data.image_size=[96, 96]"),
             cell("d", "data.image_size=[96, 96]", "data.demo.images_per_class=4",
                  "segment.task='instance'", stage="evaluate_segmenter"),
             cell("e", "data.image_size=[96, 96]", "data.variant='original'")]
    jobs = upstream_jobs(cells)
    assert [j.sets for j in jobs] == [
        (), ("data.image_size=[96, 96]",),
        ("data.demo.images_per_class=4", "data.image_size=[96, 96]")]
    assert {j.stage for j in jobs} == {"prepare"} and not any(j.publish for j in jobs)
    assert len({j.name for j in jobs}) == 3


def test_the_time_summary_says_where_the_cells_time_went():
    seen = [{"before_s": "2.0", "stages_s": "10.0", "after_s": "1.0",
             "CUDA_VISIBLE_DEVICES": gpu, "OMP_NUM_THREADS": "1"} for gpu in ("0", "1")]
    assert time_summary_of(seen, 40.0, {"CPU": 16, "GPU": 2}) == (
        "2 cells in 40 s: 4 s before their stages (clone, checkout), 20 s in them, 2 s after "
        "(publish); GPUs busy in stages 25% of the time")
    assert time_summary_of(seen, 10.0, {"CPU": 2}).endswith("CPUs busy in stages 100% of the time")


def info_file(rev: str, name: str, state: int, at: float) -> None:
    path = Path(".dvc/tmp/exps/run") / rev / f"{rev}.run"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"name": "{name}", "status": {state}, "root_dir": "/tmp/x"}}')
    os.utime(path, (at, at))


def test_the_queue_clock_times_each_cell_from_its_executors_info_file(tmp_path, monkeypatch):
    """DVC rewrites a task's info file at each change of state; the clock keeps the first
    time it sees each state, and ignores the files of earlier runs."""
    monkeypatch.chdir(tmp_path)
    t = time.time()
    info_file("old", "a", FINISHED, t - 100)   # an earlier run of a cell with the same name
    clock = Clock(since=t - 1)
    clock.read()
    assert clock.cell_time("a", 1) is None
    # DVC writes PREPARING twice (before and after the clone), so a state keeps its first time
    for state, at in ((PREPARING, t), (PREPARING, t + 1), (RUNNING, t + 2), (SUCCESS, t + 12)):
        info_file("rev1", "a", state, at)
        clock.read()
        assert clock.cell_time("a", 1) is None   # not ended yet
    info_file("rev1", "a", FINISHED, t + 13)
    info_file("rev2", "b", RUNNING, t + 20)      # PREPARING came and went unseen
    clock.read()
    info_file("rev2", "b", FAILED, t + 25)
    clock.read()
    a, b = clock.cell_time("a", 2), clock.cell_time("b", 1)
    assert (a.before, a.stages, a.after, a.devices) == (2, 10, 1, 2)
    assert (b.before, b.stages, b.after) == (0, 5, 0)
    assert clock.cell_time("c", 1) is None


def test_auto_takes_ray_wherever_there_is_more_than_one_device(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert auto_engine(gpus=8, cores=16) == "ray"
    assert auto_engine(gpus=1, cores=16) == "queue"    # one GPU: one cell at a time anyway
    assert auto_engine(gpus=0, cores=2) == "ray"       # a cell per core
    assert auto_engine(gpus=0, cores=1) == "queue"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert auto_engine(gpus=0, cores=1) == "ray"       # a cluster was named


def test_a_cell_no_node_can_hold_is_refused_with_what_to_change():
    nodes = [{"GPU": 2.0, "CPU": 2.0}, {"CPU": 1.0}]
    fits = {"a": {"num_gpus": 2, "num_cpus": 1}, "b": {"num_gpus": 0, "num_cpus": 2}}
    refuse_infeasible(fits, nodes, cpus_per_cell=1)
    with pytest.raises(UserError) as err:
        refuse_infeasible({**fits, "c": {"num_gpus": 4, "num_cpus": 1},
                           "d": {"num_gpus": 4, "num_cpus": 1}}, nodes, cpus_per_cell=1)
    assert str(err.value) == (
        "cell c and 1 more asks Ray for 4 GPU, 1 CPU but no node of the cluster has that (the "
        "most on one node: 2 GPU, 2 CPU), so it would wait forever; set train.nproc to at most 2 "
        "(study.yaml or params.yaml), or add a bigger node")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"asks Ray for 999 CPU .* set CPUS_PER_CELL "
                                        r"\(--cpus-per-cell\) to at most 2, or add"):
        refuse_infeasible({"e": {"num_cpus": 999}}, nodes, cpus_per_cell=999)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # closed again when the test connects


def test_a_ray_address_where_nothing_answers_fails_in_one_line_within_the_timeout(monkeypatch):
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    start = time.monotonic()
    with pytest.raises(UserError) as err, ray_cluster():
        pass
    assert time.monotonic() - start < CONNECT_SECONDS
    message = str(err.value)
    assert message.startswith(f"RAY_ADDRESS = '{address}': nothing answered at {address} within "
                              f"{CONNECT_SECONDS} s") and "\n" not in message
    start = time.monotonic()      # an address that drops packets: the timeout itself
    with pytest.raises(UserError, match=r"nothing answered at 192\.0\.2\.1:6379 within 1 s"):
        reachable("192.0.2.1:6379", seconds=1)
    assert time.monotonic() - start < 3
    with pytest.raises(UserError, match="is not allowed; expected host:port"):
        reachable("6379")


JOIN = """
import sys
from fashionbg.core.errors import UserError
from fashionbg.study.run import ray_engine
ray_engine.JOIN_SECONDS = 3
try:
    with ray_engine.ray_cluster():
        pass
except UserError as err:
    print(err)
    sys.exit(2)
"""


def test_an_address_that_accepts_but_is_no_ray_head_fails_within_the_join_timeout():
    with socket.socket() as listener:    # answers TCP (the probe passes), never speaks Ray
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-c", JOIN], capture_output=True, text=True,
                                env={**os.environ, "RAY_ADDRESS": address},
                                timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == (f"RAY_ADDRESS = '{address}': no Ray cluster answered there "
                                     "within 3 s; check the head's address and port (`ray "
                                     "status` on the head), or unset RAY_ADDRESS to run on this "
                                     "machine")
    assert time.monotonic() - start < 90     # 3 s, and Python and Ray starting and stopping


class Finishes:
    """An engine whose cells end as it was told: what the real engines return after their
    cells ran (their failure and loss handling is tested end to end above)."""

    def __init__(self, failed: set[str]) -> None:
        self.failed = failed

    def __enter__(self) -> "Finishes":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def capacity(self, todo):
        from fashionbg.study.plan.schedule import Capacity

        return Capacity(1, "queue slot", {})

    def run(self, todo):
        names = [c.name for c in todo]
        return [n for n in names if n not in self.failed], [n for n in names if n in self.failed]


@pytest.mark.parametrize("failed", [0, 1, 4])
def test_study_run_exits_1_naming_the_cells_that_failed_or_were_lost(tmp_path, monkeypatch,
                                                                     failed):
    import argparse

    import yaml

    from fashionbg.study import __main__ as cli
    from fashionbg.study.plan.definition import load_study

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cells = load_study(ROOT / "study.yaml", params).cells("quick")[:5]
    names = {c.name for c in cells[:failed]}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "make_engine", lambda name, options: Finishes(names))
    monkeypatch.setattr(cli, "cells_to_run", lambda todo: list(todo))
    monkeypatch.setattr(cli, "preflight", lambda todo, params, capacity: {})
    args = argparse.Namespace(engine="queue", shard="1/1", git_remote="", dvc_remote="",
                              cpus_per_cell="1")
    if not failed:
        cli.run(args, cells, params)
        return
    with pytest.raises(SystemExit) as exit_:
        cli.run(args, cells, params)
    shown = ", ".join(c.name for c in cells[:min(failed, 3)]) + (" and 1 more" if failed == 4
                                                                 else "")
    assert exit_.value.code == (f"error: {failed} of 5 cells failed or were lost ({shown}; their "
                                "logs are above); re-run to retry them, the finished ones are "
                                "kept")   # a string: Python prints it and exits with 1
    assert not (tmp_path / ".cache/study/lock").exists()


STATUS = """Task     Name       Created    Status
0f1e2d3  shallow-a  10:00 AM   Running
Worker status: 1 active, 0 idle
"""


def test_a_queue_poll_that_fails_once_is_tried_again_and_says_dvcs_error(monkeypatch):
    """`dvc queue status` failed once in CI while a worker moved a message file, and the study
    ended; now a poll is tried STATUS_TRIES times, and the error names DVC's ERROR line."""
    answers: list[str | None] = []

    def dvc(*args: str, check: bool = True) -> str:
        answer = answers.pop(0)
        if answer is None:
            stderr = "ERROR: unexpected error - [Errno 2] No such file\n\nHaving any troubles?"
            raise UserError(f"dvc {' '.join(args)} failed: {runner.error_line(stderr)}")
        return answer

    monkeypatch.setattr(runner, "dvc", dvc)
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    answers[:] = [None, None, STATUS]
    assert runner.queue_status() == ({"shallow-a": "Running"}, 1)
    answers[:] = [None] * runner.STATUS_TRIES
    with pytest.raises(UserError, match=r"queue status failed: ERROR: unexpected error"):
        runner.queue_status()


def test_a_cell_publishes_its_experiment_and_not_dvcs_scratch_refs(tmp_path):
    """Two Ray cells pushing refs/exps/exec/EXEC_HEAD into the project at once collided on its
    lock in CI: only the experiment's own ref is sent."""
    ws = tmp_path / "ws"
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run(["git", "-C", str(ws), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    for ref in ("refs/exps/ab/cdef0123/shallow-rembg-s7", "refs/exps/exec/EXEC_HEAD",
                "refs/exps/exec/EXEC_BASELINE"):
        subprocess.run(["git", "-C", str(ws), "update-ref", ref, "HEAD"], check=True)
    assert experiment_refs(ws) == ["refs/exps/ab/cdef0123/shallow-rembg-s7"]
