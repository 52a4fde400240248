"""Ctrl-C during `make study` (python -m fashionbg.study run): one line, exit 130, and nothing
left running: no DVC queue worker, no cell in the queue, no half-written experiment; running it
again finishes the cells still missing."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from helpers_project import copy_baseline, default_sigint, project_env, run


def ours(project: Path) -> list[psutil.Process]:
    """The processes working in the test's project (the queue's workers and their runs)."""
    found = []
    for proc in psutil.process_iter(["cwd"]):
        if (proc.info["cwd"] or "").startswith(str(project)) and proc.pid != os.getpid():
            found.append(proc)
    return found


@pytest.mark.timeout(900)
def test_ctrl_c_during_a_study_run_stops_its_cells(tmp_path, tiny_baseline):
    project = copy_baseline(tiny_baseline, tmp_path / "project")   # its upstream is cached
    definition = yaml.safe_load((project / "study.yaml").read_text())
    definition["presets"]["tiny"] = {"about": "one arm", "seeds": [0, 1],
                                     "arms": {"shallow": {}}}
    (project / "study.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    run(["git", "commit", "-qam", "tiny preset"], project)

    proc = subprocess.Popen([sys.executable, "-m", "fashionbg.study", "run", "--preset", "tiny",
                             "--engine", "queue"],
                            cwd=project, env=project_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    output, deadline = [], time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            line = lines.get(timeout=deadline - time.monotonic())
            assert line is not None, "".join(output)
            output.append(line)
            if "running: shallow-" in line:
                break
        else:
            pytest.fail("no cell started running:\n" + "".join(output))
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)            # Ctrl-C reaches the whole foreground group
        assert proc.wait(timeout=300) == 130
        while (line := lines.get(timeout=30)) is not None:
            output.append(line)
        text = "".join(output)
        assert "Traceback" not in text, text
        assert output[-1].strip() == "interrupted; queued cells stopped, re-run to resume", text
        for _ in range(60):     # a worker shutting down takes a moment
            if not ours(project):
                break
            time.sleep(1)
        left = [" ".join(p.cmdline()) for p in ours(project)]
        assert not left, left
        status = run(["dvc", "queue", "status"], project)
        assert "Running" not in status and "Queued" not in status, status
        refs = run(["git", "for-each-ref", "refs/exps/"], project)
        assert "shallow-" not in refs.replace("refs/exps/celery", ""), refs

        again = run([sys.executable, "-m", "fashionbg.study", "run", "--preset", "tiny",
                     "--engine", "queue"], project)
        assert "4 cells: 0 already run, 4 to run" in again and "[4/4] done, 0 failed" in again
        assert len(run(["dvc", "exp", "list", "--name-only"], project).split()) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
        for leftover in ours(project):
            leftover.kill()
