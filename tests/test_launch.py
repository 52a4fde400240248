"""The training stages keep the one-line promise however they are started and however many
processes they run: a mistake is our one `error:` line (exit code 2 from `python -m`; `dvc
repro` fails and shows it), never a traceback of the launcher; a value from params.yaml never
reaches a shell; a failed rank is named in one line; Ctrl-C is one line and exit code 130 and
stops every worker; the launcher leaves no scratch in the project or in TMPDIR."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
import yaml
from helpers_project import default_sigint, project_env
from test_distributed import dvc_project, write_project

from fashionbg.core.errors import UserError
from fashionbg.nn.launch import LAUNCHER_PID, check_devices, report_failure

ROOT = Path(__file__).resolve().parents[1]
UNKNOWN_CLASS = {"segment.task": "instance", "segment.instance_classes": ["hat"]}
BAD = [
    ("train_classifier", {"classify.lr": -1}, "classify.lr = -1 is not allowed"),
    ("train_classifier", {"train.nproc": 1.5}, "train.nproc = 1.5 is not allowed"),
    ("train_segmenter", {"train.nproc": 0}, "train.nproc = 0 is not allowed"),
    ("train_classifier", {"train.nproc": "2; touch pwned"},
     "train.nproc = '2; touch pwned' is not allowed"),
    ("train_segmenter", UNKNOWN_CLASS, "unknown: hat"),
    # every rank finds the same mistake in the data: still one line
    ("train_segmenter", {**UNKNOWN_CLASS, "train.nproc": 2}, "unknown: hat"),
]


def make_project(root: Path, changes: dict[str, object], dvc: bool = False) -> Path:
    """The tiny two-variant project of test_distributed with params changed ("section.key")."""
    project = dvc_project(root, 0, "semantic", 1) if dvc else write_project(root, 0)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def stage_env(tmp: Path, pythonpath: tuple[Path, ...] = ()) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    return {**project_env(), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(map(str, (*pythonpath, ROOT)))}


def assert_left_nothing(project: Path, tmp: Path) -> None:
    assert not list(tmp.iterdir()), list(tmp.iterdir())      # no torchelastic_* scratch
    assert not (project / ".cache").exists(), sorted(
        str(p.relative_to(project)) for p in (project / ".cache").rglob("*"))
    assert not [p for p in project.rglob("*") if ".partial-" in p.name]


def start_training(project: Path, tmp: Path, log: Path, stage: str = "train_classifier",
                   **popen: object) -> subprocess.Popen:
    """A training stage in a session of its own, its stderr in `log`, once its first epoch
    runs."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=project,
                                env=stage_env(tmp), stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, **popen)
    deadline = time.monotonic() + 200
    while "epoch 1/" not in log.read_text() and proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    return proc


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["python", "dvc"])
@pytest.mark.parametrize("stage, changes, shown", BAD)
def test_training_stage_mistake_is_one_line_both_ways(tmp_path, scratch, how, stage, changes,
                                                      shown):
    project = make_project(tmp_path / "project", changes, dvc=how == "dvc")
    command = (["dvc", "repro", "-s", stage] if how == "dvc"
               else [sys.executable, "-m", f"stages.{stage}"])
    result = subprocess.run(command, cwd=project, env=stage_env(scratch),
                            capture_output=True, text=True, timeout=240)
    seen = result.stdout + result.stderr
    assert result.returncode == 2 if how == "python" else result.returncode != 0, seen  # dvc: 255
    ours = [line for line in seen.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and shown in ours[0], seen
    assert "Traceback" not in seen and "ChildFailedError" not in seen, seen
    assert not list(tmp_path.rglob("pwned")) and not (ROOT / "pwned").exists()
    assert_left_nothing(project, scratch)


# Rank 1 alone fails where it reads the prepared cache (as if its copy were broken): a user
# error, or a bug. sitecustomize runs in every worker before the stage is imported.
RANK_1 = '''import os
if os.environ.get("RANK") == "1":
    import fashionbg.contracts.prepared as prepared
    from fashionbg.core.errors import UserError

    def load_prepared(path):
        raise {error}

    prepared.load_prepared = load_prepared
'''
FAILURES = {
    "user error": ('UserError(f"{path} is unreadable on rank 1")', 2,
                   "error: data/prepared/original is unreadable on rank 1", 0),
    "bug": ('RuntimeError("a bug on rank 1")', 1,
            "error: training process rank 1 exited with code 1", 1),
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_a_failure_on_rank_1_only_is_named_in_one_line(tmp_path, scratch, kind):
    error, code, last_line, tracebacks = FAILURES[kind]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RANK_1.format(error=error))
    project = make_project(tmp_path / "project", {"train.nproc": 2})
    result = subprocess.run([sys.executable, "-m", "stages.train_classifier"], cwd=project,
                            env=stage_env(scratch, (hook,)), capture_output=True,
                            text=True, timeout=240)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and lines[-1] == last_line, result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    # a bug shows its rank's own traceback (once: rank 0 is stopped quietly), never ours
    assert result.stderr.count("Traceback") == tracebacks, result.stderr
    assert "ChildFailedError" not in result.stderr and not (project / "models").exists()
    assert_left_nothing(project, scratch)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage, nproc", [("train_classifier", 1), ("train_classifier", 2),
                                          ("train_segmenter", 1)])
def test_ctrl_c_is_one_line_and_stops_every_worker(tmp_path, scratch, stage, nproc):
    """SIGINT to the foreground process group, as a terminal sends it, once training runs."""
    project = make_project(tmp_path / "project", {"train.nproc": nproc, "train.workers": 1,
                                                  "classify.epochs": 500, "segment.epochs": 500})
    log = tmp_path / "stderr.txt"
    proc = start_training(project, scratch, log, stage, preexec_fn=default_sigint)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)   # ranks, loaders
        assert children
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(children, timeout=15)
    text = log.read_text()
    assert not alive and text.strip().splitlines()[-1] == "interrupted; re-run to resume", text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert not list(project.glob("models/*.pt")), list(project.glob("models/*.pt"))
    assert_left_nothing(project, scratch)


# Ctrl-C arriving while fork runs its hooks, as when a DataLoader starts an epoch's workers:
# Python drops the KeyboardInterrupt raised in the hook ("Exception ignored in: _releaseLock")
DROPPED_CTRL_C = """
import os, signal, time
from fashionbg.core.cli import stage_main

@stage_main
def main():
    os.register_at_fork(after_in_parent=lambda: signal.raise_signal(signal.SIGINT))
    if os.fork() == 0:
        os._exit(0)
    time.sleep(120)   # blocked in a system call, as a DataLoader waiting for a batch

main()
"""


def test_a_ctrl_c_python_drops_in_a_fork_hook_still_stops_the_stage():
    result = subprocess.run([sys.executable, "-c", DROPPED_CTRL_C], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, preexec_fn=default_sigint)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "interrupted; re-run to resume", result.stderr


# The same for a rank's quiet exit on its launcher's SIGTERM (CI: "Exception ignored in:
# _releaseLock ... SystemExit: 143" while a rank forked its DataLoader workers)
DROPPED_STOP = DROPPED_CTRL_C.replace("signal.SIGINT", "signal.SIGTERM").replace(
    "@stage_main", "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n\n@stage_main"
).replace("import os, signal, time", "import os, signal, sys, time")


def test_a_rank_s_sigterm_exit_python_drops_in_a_fork_hook_still_ends_it():
    result = subprocess.run([sys.executable, "-c", DROPPED_STOP], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 143 and not result.stderr.strip(), result.stderr


# A rank forks a DataLoader worker, which the launcher's SIGTERM (to the rank's process group)
# reaches too; the rank's own temp folder (pymp-*) must outlive it
FORKED_WORKER = """
import multiprocessing.util, os, signal, time
from fashionbg.nn.launch import as_worker

with as_worker():
    worker = os.fork()
    if worker == 0:
        time.sleep(30)
        os._exit(0)
    time.sleep(0.5)
    os.kill(worker, signal.SIGTERM)
    _, status = os.waitpid(worker, 0)
    print(os.waitstatus_to_exitcode(status), os.path.isdir(multiprocessing.util.get_temp_dir()))
"""


def test_a_ranks_forked_worker_dies_on_sigterm_and_leaves_the_ranks_folders(scratch):
    """With the rank's SIGTERM handler, a worker took the rank's parent for a dead launcher and
    removed the rank's pymp-* folder while the rank was exiting (a traceback in CI)."""
    env = {**stage_env(scratch), LAUNCHER_PID: str(os.getpid())}
    result = subprocess.run([sys.executable, "-c", FORKED_WORKER], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == [str(-signal.SIGTERM), "True"], result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ranks_die_with_a_killed_launcher_and_write_nothing_after(tmp_path,
                                                                  scratch):
    """SIGKILL to the stage alone (the OOM killer, a scheduler): its two ranks and their loaders
    end within seconds, write no checkpoint or curves after it, and leave no scratch."""
    project = make_project(tmp_path / "project", {"train.nproc": 2, "train.workers": 1,
                                                  "classify.epochs": 500})
    log = tmp_path / "stderr.txt"
    proc = start_training(project, scratch, log)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)   # ranks, loaders
        assert len(children) >= 2
        proc.kill()
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=5)
    finally:
        for child in psutil.Process(proc.pid).children() if proc.poll() is None else []:
            child.kill()
    for straggler in alive:
        straggler.kill()
    assert not alive, [p.pid for p in alive]
    written = {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()}
    time.sleep(2)
    assert {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()} == written
    assert not (project / "models/classifier.pt").exists()
    assert_left_nothing(project, scratch)


def test_more_cuda_processes_than_gpus_is_refused_before_launch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"train.nproc = 2 starts one process per GPU but "
                                        r"classify.device runs on CUDA and 1 GPU\(s\) are"):
        check_devices(2, torch.device("cuda"), "classify.device")
    check_devices(1, torch.device("cuda"), "classify.device")
    check_devices(8, torch.device("cpu"), "classify.device")


def failure(exitcode: int, timestamp: int, data: dict | None = None) -> SimpleNamespace:
    """What the launcher reports of a failed rank (torch's ProcessFailure, the fields read)."""
    data = data or {"message": "<NONE>"}
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, error_file_data=data,
                           message=data["message"], signal_name=lambda: "SIGTERM")


def test_the_launcher_reports_the_first_user_error_else_the_first_rank_that_failed():
    mistake = {"message": "params are wrong", "user_error": True}
    with pytest.raises(UserError, match="^params are wrong$"):
        report_failure({0: failure(-15, 5), 1: failure(2, 9, mistake), 2: failure(1, 1)})
    with pytest.raises(SystemExit, match="^error: training process rank 2 exited with code 1$"):
        report_failure({0: failure(-15, 0), 1: failure(2, 9), 2: failure(1, 8)})
    # Ctrl-C that reached the ranks before the launcher's own KeyboardInterrupt: the one line
    with pytest.raises(KeyboardInterrupt):
        report_failure({0: failure(130, 7), 1: failure(143, 7)})
    with pytest.raises(SystemExit, match="^error: training process rank 1 exited with code 1$"):
        report_failure({0: failure(130, 7), 1: failure(1, 6)})
    # a rank that exited on the launcher's SIGTERM in the same second as the failure (CI)
    with pytest.raises(SystemExit, match="^error: training process rank 1 exited with code 1$"):
        report_failure({0: failure(143, 7), 1: failure(1, 7)})
    with pytest.raises(SystemExit, match="^error: training process rank 0 was killed by SIG"):
        report_failure({0: failure(-15, 3), 1: failure(-15, 3)})
