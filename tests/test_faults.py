"""Stages killed outright (SIGKILL, as by the OOM killer or a lost node) at a random point leave
nothing behind that DVC or git trips over: the next `dvc repro` gives outputs byte-identical to
an uninterrupted run, git and DVC see nothing new, and the stage's next run clears its
work-in-progress folder. Ctrl-C under `dvc repro` is the stage's one line, and the next run
resumes from the masks already computed."""
import os
import re
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from helpers_project import (copy_baseline, copy_project, default_sigint, project_env, run,
                             shrink_params)

KILLED = ("remove_background", "prepare")


def data_outs(project: Path, stage: str) -> dict[str, str]:
    """path → md5 of the stage's data outputs in dvc.lock (its metrics hold timings)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    return {out["path"]: out["md5"] for out in lock["outs"] if out["path"].startswith("data/")}


def out_hashes(project: Path) -> dict[str, str]:
    return {path: md5 for stage in KILLED for path, md5 in data_outs(project, stage).items()}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def forced_run(project: Path, stage: str) -> subprocess.Popen:
    return subprocess.Popen(["dvc", "repro", "--force", "-s", stage], cwd=project,
                            env=project_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def duration(project: Path, stage: str) -> float:
    """Seconds an uninterrupted forced `dvc repro -s stage` takes."""
    began = time.monotonic()
    assert forced_run(project, stage).wait() == 0
    return time.monotonic() - began


def kill_after(project: Path, stage: str, delay: float) -> None:
    """SIGKILL dvc and the stage `delay` s after `dvc repro` starts it."""
    proc = forced_run(project, stage)
    time.sleep(delay)
    assert proc.poll() is None, f"{stage} finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.timeout(900)
def test_sigkilled_stages_rerun_to_identical_outputs(tmp_path):
    project = tmp_path / "project"
    copy_project(project)
    shrink_params(project / "params.yaml")
    run(["git", "init", "-q"], project)
    run(["dvc", "repro", "prepare"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "uninterrupted"], project)
    expected = out_hashes(project)
    expected_files = {d: tree_bytes(project / d) for d in ("data/rembg", "data/prepared")}

    seed = random.randrange(1 << 16)
    rng = random.Random(seed)
    for stage in KILLED:
        # Lose this stage's output so that it must run, kill it at a random point (between
        # dvc's start-up and the end of the write), then run again.
        delay = rng.uniform(0.3, 0.9) * duration(project, stage)
        for path in data_outs(project, stage):
            shutil.rmtree(project / path)
        kill_after(project, stage, delay)

        run(["dvc", "repro", "prepare"], project)
        where = f"{stage} killed (seed {seed})"
        assert out_hashes(project) == expected, where
        assert {d: tree_bytes(project / d) for d in expected_files} == expected_files, where
        status = run(["git", "status", "--porcelain", "--untracked-files=all"], project)
        assert "??" not in status, f"git sees new files: {where}\n{status}"
        assert "up to date" in run(["dvc", "status", "prepare"], project), where
        # DVC restored the output from its cache without running the stage; the stage's own
        # next write clears what the killed one left.
        run(["dvc", "repro", "--force", "-s", stage], project)
        assert not list(project.rglob("*.partial-*")), f"leftovers: {where}"


@pytest.mark.timeout(600)
def test_ctrl_c_of_remove_background_under_dvc_repro_is_one_line_and_resumes(tmp_path,
                                                                             tiny_baseline):
    project = copy_baseline(tiny_baseline, tmp_path / "project")
    shutil.rmtree(project / ".cache/rembg")                 # every mask is computed again
    log = tmp_path / "repro.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "repro", "--force", "-s", "remove_background"],
                                cwd=project, env=project_env(), stdout=out, stderr=out,
                                start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 300
        while not list(project.glob(".cache/rembg/*/*/*.png")):        # the first mask is in
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        stage = psutil.Process(proc.pid).children(recursive=True)      # the stage, its workers
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) != 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(stage, timeout=15)
    text = log.read_text()
    assert "interrupted; re-run to resume" in text and "Traceback" not in text, text
    assert not alive and not list(project.rglob("*.partial*")), text

    resumed = run(["dvc", "repro", "--force", "-s", "remove_background"], project)  # not its run cache
    found = re.search(r"(\d+) of (\d+) masks computed", resumed)
    assert found, resumed
    computed, images = map(int, found.groups())
    assert 0 < computed < images, resumed                # the masks done before Ctrl-C reused
    masks = "data/rembg/masks"
    assert tree_bytes(project / masks) == tree_bytes(tiny_baseline / masks)
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], project)
    assert "??" not in status, status
