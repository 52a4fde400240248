"""A cold study on Ray: a fresh tiny project with an empty DVC cache, 4 cells, 2 at a time (a Ray
the study starts on this 2-core machine, one core per cell). Its upstream stages run once, not
once per cell that starts before the run cache has them; the cells' workspaces link their data
from the shared cache; the cache is intact after the cells."""
import hashlib
import os
from pathlib import Path

import pytest
from helpers_project import project_env, run, tiny_project
from helpers_ray import UPSTREAM, finished, stage_runs, study_running, tiny_preset, training_cell

pytestmark = pytest.mark.slow
OUTPUTS = ("data/raw", "data/rembg", "data/prepared")


def links(ws: Path, cache: Path) -> dict[str, bool]:
    """Every file of the DVC outputs under the workspace's data/: whether it is a link into the
    cache (a hardlink of a cache file, or a symlink that resolves into the cache)."""
    inodes = {os.stat(p).st_ino for p in cache.rglob("*") if p.is_file()}
    out = {}
    for path in (p for out in OUTPUTS for p in (ws / out).rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(ws))] = path.resolve().is_relative_to(cache.resolve())
        elif path.is_file():
            out[str(path.relative_to(ws))] = path.stat().st_ino in inodes
    return out


def corrupt(cache: Path) -> list[str]:
    """The cache's files whose content no longer has the md5 they are stored under."""
    bad = []
    for path in (cache / "files/md5").rglob("*"):
        if path.is_file():
            digest = path.parent.name + path.name.removesuffix(".dir")
            if hashlib.md5(path.read_bytes()).hexdigest() != digest:
                bad.append(str(path))
    return bad


@pytest.mark.timeout(1800)
def test_a_cold_study_runs_each_upstream_once_and_links_the_data(tmp_path):
    project = tiny_project(tmp_path / "project")
    tiny_preset(project, [0, 1])
    run(["git", "commit", "-qam", "tiny preset"], project)
    assert not (project / ".dvc/cache").exists()
    env = {k: v for k, v in project_env().items() if k != "RAY_ADDRESS"}
    with study_running(project, env, "--engine", "ray", "--cpus-per-cell", "1") as proc:
        cell = training_cell(project)
        assert cell, "no cell reached its training stage"
        ws = Path(cell.cwd())
        linked = links(ws, project / ".dvc/cache")
        site_cache = (ws / ".dvc/tmp/site").is_dir()
        finished(proc, 4, timeout=1500)

    runs = stage_runs(project)
    assert {stage: runs.get(stage, 0) for stage in UPSTREAM} == dict.fromkeys(UPSTREAM, 1), runs
    assert runs.get("train_classifier") == 4, runs

    assert len(linked) > 10 and set(OUTPUTS) == {"/".join(Path(p).parts[:2]) for p in linked}
    assert all(linked.values()), [p for p, ok in linked.items() if not ok]
    assert site_cache, "DVC's site cache is not in the workspace"
    assert list((project / ".cache/rembg").rglob("*.png")), "the masks are not the project's"
    assert not corrupt(project / ".dvc/cache")
