import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def u2netp_home() -> Path:
    """The real U²-Net-p weights under the project's model home (fetched once if missing)."""
    from fashionbg.background.weights import ensure_model

    home = ROOT / "models" / "rembg"
    ensure_model("u2netp", home)
    return home


@pytest.fixture(scope="session")
def u2netp_session(u2netp_home):
    from fashionbg.background.sod import make_session

    return make_session("u2netp", u2netp_home)


@pytest.fixture
def scratch() -> Path:
    """A fresh, short folder for a stage's TMPDIR (removed after): multiprocessing's sockets
    go under TMPDIR, and AF_UNIX paths end at 107 bytes, which a pytest-xdist worker's tmp_path
    of a long test name nearly reaches on its own."""
    folder = Path(tempfile.mkdtemp(prefix="t"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], str]) -> Path:
    """The project `build(project)` makes, once per test run and shared by every pytest-xdist
    worker (a lock in the run's common temp folder); what build returned is kept beside it in
    `run.log`, written last, so a build that failed half-way is started over."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent                  # one folder above every worker's own
    project = shared / name / "project"
    with FileLock(shared / f"{name}.lock"):
        if not (project.parent / "run.log").exists():
            shutil.rmtree(project.parent, ignore_errors=True)
            project.parent.mkdir(parents=True)
            (project.parent / "run.log").write_text(build(project))
    return project


@pytest.fixture(scope="session")
def tiny_baseline(tmp_path_factory) -> Path:
    """One tiny project (helpers_project.tiny_project) after `dvc repro`, committed; the first
    repro's output is its `run.log`, and it ran with an empty HOME beside the project (`home`,
    which test_pipeline_e2e reads). Tests never change it: they read it or work on a copy
    (helpers_project.copy_baseline)."""
    from helpers_project import run, tiny_project

    def build(project: Path) -> str:
        (project.parent / "home").mkdir()
        project.mkdir()
        tiny_project(project)
        log = run(["dvc", "repro"], project, home=project.parent / "home")
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-qm", "baseline run"], project)
        return log

    return built_once(tmp_path_factory, "tiny-baseline", build)


@pytest.fixture(scope="session")
def tiny_queue_study(tmp_path_factory, tiny_baseline) -> Path:
    """A copy of the tiny baseline whose `tiny` preset (one arm, both variants, seeds 0 and 1:
    4 cells) ran through DVC's experiment queue; the study's output is its `run.log`. The queue's
    end-to-end test goes on from a copy, and the Ray engine's test compares its report with
    this one's; tests never change it."""
    from helpers_project import copy_baseline, run
    from helpers_ray import tiny_preset

    def build(project: Path) -> str:
        copy_baseline(tiny_baseline, project)
        tiny_preset(project, [0, 1])
        run(["git", "commit", "-qam", "tiny study"], project)
        return run([sys.executable, "-m", "fashionbg.study", "run", "--engine", "queue",
                    "--preset", "tiny"], project)

    return built_once(tmp_path_factory, "tiny-queue-study", build)


# `make test-quick` (the inner loop) deselects the tests marked slow: those that run stages,
# DVC, torchrun, Ray or the real U²-Net (in subprocesses, or the real weights in this one),
# minutes in all on 2 cores. `make test` runs everything. A module whose every test is slow is
# listed here; a module that mixes marks its slow tests with @pytest.mark.slow; a test that
# uses one of SLOW_FIXTURES (the real U²-Net, the tiny baseline) is slow wherever it is.
SLOW_MODULES = {"test_bench_gpu", "test_distributed", "test_faults", "test_paper_smoke",
                "test_pipeline_e2e", "test_repro_e2e", "test_study_e2e", "test_study_interrupt",
                "test_study_ray"}
SLOW_FIXTURES = {"u2netp_session", "u2netp_home", "tiny_baseline", "tiny_queue_study"}
# `make test` runs `pytest -n 2 --dist loadgroup`: 2 pytest-xdist workers. The long
# end-to-end modules form groups of about equal
# CPU time, so each worker runs one while the other tests fill in; a module with a
# module-scoped fixture (test_readme, test_study_ray) must stay in one group, or each worker
# would build that fixture.
GROUPS = {"e2e-a": {"test_paper_smoke", "test_study_e2e", "test_distributed"},
          "e2e-b": {"test_study_ray", "test_readme", "test_pipeline_e2e", "test_faults",
                    "test_study_interrupt"},
          "e2e-c": {"test_gpu_check", "test_repro_e2e"}}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if item.module else ""
        if (module in SLOW_MODULES or "end_to_end" in item.name
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)
        group = next((name for name, modules in GROUPS.items() if module in modules), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
