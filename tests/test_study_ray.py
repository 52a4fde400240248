"""The study on a real Ray cluster: a head declared with 2 GPUs and a second node, started by the
test with `ray start` (their own temp dir and ports) and stopped after. Tiny studies run through
`python -m fashionbg.study run --engine ray`: two cells at a time, each on its own
CUDA_VISIBLE_DEVICES, with the same report as DVC's queue; cells no node can hold are refused
before anything runs; a cell whose process is SIGKILLed is run again, at most 3 times, and a
re-run resumes what was lost or interrupted; a second study in the same project refuses in one
line; two clones, a bare Git remote and a local DVC remote stand
for two machines and a third that reports."""
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from helpers_project import copy_baseline, default_sigint, project_env, run, tiny_project
from helpers_ray import (UPSTREAM, cell_logs, cell_of, stage_runs, study_running,
                         tiny_preset, training_cell)

from fashionbg.study.run.ray_engine import ray_temp_dir

pytestmark = pytest.mark.slow
# The test cluster's token, said to its nodes and to the study that joins it (a token file
# would live in ~/.ray).
TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
         "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_processes(temp: str) -> list[psutil.Process]:
    """The processes of the cluster whose files are in `temp`, and their children (Ray's agents
    and workers), and no other Ray on the machine."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp in arg for arg in proc.info["cmdline"] or []):
            try:
                found |= {proc, *proc.children(recursive=True)}
            except psutil.Error:
                continue
    return list(found)


def own_ray(project: Path) -> list[psutil.Process]:
    """The processes of a Ray the study started for itself in `project`."""
    return ray_processes(str(ray_temp_dir(project)))


@pytest.fixture(scope="module")
def cluster():
    """`ray start --head --num-gpus 2` and a second node; the head's address. Torn down by
    stopping this cluster's own processes (`ray stop` would stop every Ray on the machine)."""
    temp = tempfile.mkdtemp(prefix="fbgray")     # short: Ray's socket paths live under it
    port = free_port()
    env = {**project_env(), **TOKEN}
    common = ["--disable-usage-stats", "--temp-dir", temp, "--include-dashboard=false"]
    ray = str(Path(sys.executable).parent / "ray")
    try:
        subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "2",
                        "--num-gpus", "2", "--node-ip-address", "127.0.0.1",
                        "--min-worker-port", "20000", "--max-worker-port", "20999", *common],
                       env=env, check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                        "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
                        "--min-worker-port", "21000", "--max-worker-port", "21999",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True,
                       text=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        for proc in ray_processes(temp):
            proc.terminate()
        psutil.wait_procs(ray_processes(temp), timeout=20)
        for proc in ray_processes(temp):
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_baseline) -> Path:
    """The tests' tiny baseline with a `tiny` preset: every test starts from a copy."""
    project = copy_baseline(tiny_baseline, tmp_path_factory.mktemp("baseline") / "project")
    tiny_preset(project, [0])
    run(["git", "commit", "-qam", "tiny preset"], project)
    return project


def study_project(baseline: Path, path: Path, seeds: list[int]) -> Path:
    """A copy of the baseline whose `tiny` preset has these seeds."""
    shutil.copytree(baseline, path, symlinks=True)
    tiny_preset(path, seeds)
    run(["git", "commit", "-qam", f"seeds {seeds}"], path)
    return path


def study(project: Path, *args: str, address: str | None = None) -> str:
    env = {**project_env(), **({"RAY_ADDRESS": address, **TOKEN} if address else {})}
    result = subprocess.run([sys.executable, "-m", "fashionbg.study", *args, "--preset", "tiny"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def assert_nothing_left(project: Path) -> None:
    assert not list((project / ".cache/study/workspaces").glob("*")), "a workspace was left"
    assert not (project / ".cache/study/lock").exists()
    refs = run(["git", "for-each-ref", "refs/exps/celery", "refs/exps/exec"], project)
    assert not refs.strip(), refs     # nor DVC's scratch refs, which cells once pushed here
    left = [p for p in psutil.process_iter(["cwd"]) if str(project) in (p.info["cwd"] or "")
            and p.pid != os.getpid()]
    assert not left, [p.cmdline() for p in left]


def kill(proc: psutil.Process) -> None:
    """SIGKILL, and wait until the process is gone: until then the search for the cell's next
    attempt would find this one again (CI saw it)."""
    proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs([proc], timeout=60)
    assert not alive, proc


def claim_rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")]


@pytest.mark.timeout(2400)
def test_cells_run_two_at_a_time_on_their_own_gpus_and_report_as_the_queue(tmp_path, cluster,
                                                                            baseline,
                                                                            tiny_queue_study):
    project = study_project(baseline, tmp_path / "project", [0, 1])
    out = study(project, "run", "--engine", "ray", address=cluster)
    assert "[4/4] done, 0 failed" in out, out
    logs = cell_logs(project)
    assert len(logs) == 4
    seen = [info for info, _ in logs.values()]
    assert {s["CUDA_VISIBLE_DEVICES"] for s in seen} == {"0", "1"}
    overlapping = [(a, b) for i, a in enumerate(seen) for b in seen[i + 1:]
                   if float(a["started"]) < float(b["ended"])
                   and float(b["started"]) < float(a["ended"])]
    assert overlapping, "no two cells ran at once"
    for a, b in overlapping:       # never two cells on one card
        assert a["CUDA_VISIBLE_DEVICES"] != b["CUDA_VISIBLE_DEVICES"]
    for _, text in logs.values():   # the run cache restored every upstream stage
        assert "Running stage 'train_classifier'" in text
        assert not any(f"Running stage '{stage}'" in text for stage in UPSTREAM), text
    assert not set(UPSTREAM) & set(stage_runs(project))   # nor did the upstream run before them
    assert_nothing_left(project)
    assert "4 cells: 4 already run, 0 to run" in study(project, "run", "--engine", "ray",
                                                       address=cluster)

    # the same cells through DVC's queue (conftest), reported from a copy
    queued = copy_baseline(tiny_queue_study, tmp_path / "queued")
    assert claim_rows(study(project, "report")) == claim_rows(study(queued, "report"))


@pytest.mark.timeout(600)
def test_a_cell_no_node_can_hold_is_refused_before_anything_runs(tmp_path, cluster):
    project = tiny_project(tmp_path / "project")
    tiny_preset(project, [0])
    definition = yaml.safe_load((project / "study.yaml").read_text())
    definition["presets"]["wide"] = {"about": "4 GPUs a cell", "seeds": [0],
                                     "params": {"train.nproc": 4}, "arms": {"shallow": {}}}
    (project / "study.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    run(["git", "commit", "-qam", "tiny and wide presets"], project)
    env = {**project_env(), "RAY_ADDRESS": cluster, **TOKEN}
    for preset, extra, asks in (("wide", [], "4 GPU, 1 CPU"),     # the head has 2 GPUs
                                ("tiny", ["--cpus-per-cell", "999"], "1 GPU, 999 CPU")):
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "fashionbg.study", "run", "--preset",
                                 preset, "--engine", "ray", *extra], cwd=project, env=env,
                                capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - start
        assert result.returncode == 2, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"asks Ray for {asks} but no node of the cluster has that" in errors[0]
        assert "pre-flight" not in result.stderr + result.stdout   # refused before it
        assert seconds < 60, seconds
        print(f"refused in {seconds:.1f} s: {errors[0]}")
    assert not run(["dvc", "exp", "list", "--name-only"], project).strip()
    assert not list((project / ".cache/study/workspaces").glob("*"))


@pytest.mark.timeout(2400)
def test_killed_cells_run_again_at_most_three_times_and_a_rerun_resumes(tmp_path, cluster,
                                                                         baseline):
    """Of the two cells, one is SIGKILLed once (it runs again and is done), the other at each
    of its attempts (lost after 3, reported once); a second study meanwhile refuses; the study
    exits 1, and running it again runs only the lost cell."""
    project = study_project(baseline, tmp_path / "project", [3])
    env = {**project_env(), "RAY_ADDRESS": cluster, **TOKEN}
    with study_running(project, env, "--engine", "ray", preexec_fn=default_sigint) as proc:
        victim = training_cell(project)
        assert victim, "no cell reached its training stage"
        second = subprocess.run([sys.executable, "-m", "fashionbg.study", "run", "--preset",
                                 "tiny"], cwd=project, env=project_env(), capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2
        line = second.stderr.strip()
        assert re.fullmatch(r"error: another study is running in this project \(PID "
                            rf"{proc.pid} holds \.cache/study/lock\); wait for it to finish or "
                            r"stop it, then re-run", line), second.stderr
        doomed = cell_of(victim)
        kill(victim)
        once = training_cell(project, other_than=doomed)
        assert once, "the other cell never reached its training stage"
        other = cell_of(once)
        kill(once)
        for attempt in (2, 3):
            victim = training_cell(project, cell=doomed)
            assert victim, f"attempt {attempt} of {doomed} never reached its training stage"
            kill(victim)
        out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert re.search(rf"cell {doomed} lost after 3 attempts \(.*\); re-run the study", out), out
    assert f"error: 1 of 2 cells failed or were lost ({doomed}; " in out, out
    logs = cell_logs(project)
    assert set(logs) == {other} and logs[other][0]["attempts"] == 2, logs.keys()
    assert f"cell {other} done" in out
    assert_nothing_left(project)

    again = study(project, "run", "--engine", "ray", address=cluster)
    assert "2 cells: 1 already run, 1 to run" in again and "[1/1] done, 0 failed" in again
    experiments = run(["dvc", "exp", "list", "--name-only"], project).split()
    assert sorted(experiments) == sorted([doomed, other])


@pytest.mark.timeout(2400)
def test_two_machines_share_the_grid_through_the_remotes(tmp_path, baseline):
    origin = study_project(baseline, tmp_path / "origin", [5])
    remote, storage = tmp_path / "remote.git", tmp_path / "dvc-remote"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", str(remote)], tmp_path)
    run(["git", "push", "-q", str(remote), "HEAD:refs/heads/main"], origin)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], origin)
    run(["dvc", "push", "--run-cache"], origin)
    remotes = ["--git-remote", str(remote), "--dvc-remote", str(storage)]
    for shard in ("1/2", "2/2"):     # each machine: a clone and a local Ray of its own
        machine = tmp_path / f"machine{shard[0]}"
        run(["git", "clone", "-q", str(remote), str(machine)], tmp_path)
        out = study(machine, "run", "--engine", "ray", "--shard", shard, *remotes)
        assert "[1/1] done, 0 failed" in out, out
        for _, text in cell_logs(machine).values():   # upstream restored from the remote
            assert "Running stage 'train_classifier'" in text
            assert not any(f"Running stage '{stage}'" in text for stage in UPSTREAM), text
        assert_nothing_left(machine)
        assert not own_ray(machine), "the study's own Ray was left running"

    reporter = tmp_path / "reporter"
    run(["git", "clone", "-q", str(remote), str(reporter)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "storage", str(storage)], reporter)
    run(["dvc", "exp", "pull", "--all-commits", str(remote)], reporter)
    report = study(reporter, "report")
    assert "2 cells read from the experiments, 0 not run yet" in report, report


@pytest.mark.timeout(1200)
def test_ctrl_c_stops_the_cells_and_the_study_s_own_ray(tmp_path, baseline):
    project = study_project(baseline, tmp_path / "p", [7])
    env = {k: v for k, v in project_env().items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "fashionbg.study", "run", "--preset", "tiny",
                             "--engine", "ray"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    try:
        assert training_cell(project), "no cell reached its training stage"
        os.killpg(proc.pid, signal.SIGINT)          # Ctrl-C reaches the whole foreground group
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1] == "interrupted; queued cells stopped, re-run to resume"
    assert_nothing_left(project)
    assert not run(["dvc", "exp", "list", "--name-only"], project).strip()
    assert not own_ray(project), "the study's own Ray is still running"

    again = subprocess.run([sys.executable, "-m", "fashionbg.study", "run", "--preset", "tiny",
                            "--engine", "ray"], cwd=project, env=env, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 cells: 0 already run, 2 to run" in again.stdout + again.stderr, again.stderr
    assert len(run(["dvc", "exp", "list", "--name-only"], project).split()) == 2
    assert not own_ray(project), "the study's own Ray is still running"
