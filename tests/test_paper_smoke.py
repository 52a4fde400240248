"""The `paper` preset as a researcher first runs it: `make study PRESET=paper SMOKE=1` with the
datasets said once, on miniature archives in the real layouts, on Ray (what ENGINE=auto picks on
2 cores without a GPU: a Ray of the study's own, a cell per core; DVC's queue has its own
end-to-end test in test_study_e2e). Every arm, variant, task and claim of the preset runs, at
the 3 seeds every statistic of the report needs; the study starts cold (an empty DVC cache):
each dataset is downloaded and background-removed once, whatever the number of cells, a running
cell's data are links into the shared cache, and the cache is intact after; a second run runs
nothing."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers_archives import fashionpedia_folder, fashionstyle14_zip
from helpers_project import project_env, tiny_project
from helpers_ray import UPSTREAM, cell_logs, stage_runs, training_cell

from fashionbg.study.plan.definition import load_study
from fashionbg.study.read.report import NO_SPREAD
from fashionbg.study.read.stats import VERDICTS

OUTPUTS = ("data/raw", "data/rembg", "data/prepared")


def make_study(project: Path, fs14: Path, fp: Path) -> subprocess.Popen:
    venv = Path(sys.executable).parent.parent
    return subprocess.Popen(
        ["make", "--no-print-directory", "study", f"VENV={venv}", "ENGINE=ray", "PRESET=paper",
         "SMOKE=1", f"FASHIONSTYLE14={fs14}", f"FASHIONPEDIA={fp}"], cwd=project,
        env={k: v for k, v in project_env().items() if k != "RAY_ADDRESS"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=2000)
    assert proc.returncode == 0, out[-4000:]
    return out


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


@pytest.mark.timeout(2400)
def test_paper_smoke_run_on_the_real_layouts(tmp_path):
    fs14 = fashionstyle14_zip(tmp_path / "datasets/FashionStyle14_v1.zip")
    fp = fashionpedia_folder(tmp_path / "datasets/fashionpedia")
    project = tiny_project(tmp_path / "project")
    readme = (project / "README.md").read_text()
    assert not (project / ".dvc/cache").exists()

    proc = make_study(project, fs14, fp)
    try:
        cell = training_cell(project)
        assert cell, "no cell reached its training stage"
        ws = Path(cell.cwd())
        linked = links(ws, project / ".dvc/cache")
        site_cache = (ws / ".dvc/tmp/site").is_dir()
        out = finished(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    params = yaml.safe_load((project / "params.yaml").read_text())
    study = load_study(project / "study.yaml", params)
    cells = study.cells("paper-smoke")
    n = len(cells)
    assert n == 48 and {c.arm.task for c in cells} == {"classify", "semantic", "instance"}
    assert f"pre-flight passed for {n} cells" in out and f"[{n}/{n}] done, 0 failed" in out

    runs = stage_runs(project)   # in the upstream runs' and the cells' logs: once per dataset
    assert {stage: runs.get(stage) for stage in UPSTREAM} == dict.fromkeys(UPSTREAM, 2), runs
    assert runs.get("train_classifier") == sum(c.arm.task == "classify" for c in cells), runs
    assert len(cell_logs(project)) == n
    assert len(linked) > 10 and set(OUTPUTS) == {"/".join(Path(p).parts[:2]) for p in linked}
    assert all(linked.values()), [p for p, ok in linked.items() if not ok]
    assert site_cache, "DVC's site cache is not in the workspace"
    assert list((project / ".cache/rembg").rglob("*.png")), "the masks are not the project's"
    assert not corrupt(project / ".dvc/cache")

    report = (project / "reports/study-paper-smoke.md").read_text()
    assert f"{n} cells read from the experiments, 0 not run yet" in report
    assert "make study PRESET=paper SMOKE=1" in report
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in report.splitlines()}
    for claim in study.claims:   # every claim tested at 3 seeds: p, its Holm-adjusted p, a verdict
        _, _, _, difference, ci90, test, verdict, detectable, plan = row = rows[claim.claim]
        assert "[" in difference and "[" in ci90 and verdict.strip("*") in VERDICTS, row
        if test == NO_SPREAD:    # only a one-epoch Mask R-CNN may find nothing at all
            assert claim.arm == "instance" and verdict == "**inconclusive**", row
            continue
        assert test.count("(") == 1 and "no verdict" not in test, row
        assert detectable[0].isdigit() and plan.strip(" |") != "– / –", row
    assert (project / "README.md").read_text() == readme   # a smoke run leaves it alone

    assert f"{n} cells: {n} already run, 0 to run" in finished(make_study(project, fs14, fp))
