"""The parts of the study's engines that need no cluster: the one-study-at-a-time lock (held by
a real second process), choosing an engine, the command that re-runs a cell, clearing what
a killed cell left behind (a real process working in a stale workspace), which cells share an
upstream run, and the summary of where the cells' time went."""
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fashionbg.core.errors import UserError
from fashionbg.study.engines import EngineOptions, make_engine, study_lock
from fashionbg.study.ray_engine import time_summary
from fashionbg.study.upstream import upstream_jobs, upstream_params
from fashionbg.study.workspace import CellJob, clear_workspaces

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from pathlib import Path
from fashionbg.study.engines import study_lock
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
        assert lock.read_text() == f"{__import__('os').getpid()}\n"
    assert not lock.exists()


def test_an_unknown_engine_or_remotes_without_ray_are_refused():
    with pytest.raises(UserError, match="ENGINE = 'spark' is not allowed; expected queue or ray"):
        make_engine("spark", EngineOptions())
    with pytest.raises(UserError, match="--git-remote / --dvc-remote need --engine ray"):
        make_engine("queue", EngineOptions(git_remote="/srv/git/fashionbg.git"))


def test_the_queue_path_does_not_load_ray():
    code = ("import sys; import fashionbg.study.__main__; "
            "from fashionbg.study.engines import EngineOptions, make_engine; "
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
    assert time_summary(seen, 40.0, {"CPU": 16, "GPU": 2}) == (
        "2 cells in 40 s: 4 s before their stages (clone, checkout), 20 s in them, 2 s after "
        "(publish); GPUs busy in stages 25% of the time")
    assert time_summary(seen, 10.0, {"CPU": 2}).endswith("CPUs busy in stages 100% of the time")
