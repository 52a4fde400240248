"""The `paper` preset as a researcher first runs it: `make study PRESET=paper SMOKE=1` with the
datasets said once, on miniature archives in the real layouts, on Ray (what ENGINE=auto picks on
2 cores without a GPU: a Ray of the study's own, a cell per core; DVC's queue has its own
end-to-end test in test_study_e2e). Every arm, variant, task and claim of the
preset runs; each dataset is downloaded and background-removed once, whatever the number of
cells; a second run runs nothing."""
import sys
from pathlib import Path

import pytest
import yaml
from helpers_archives import fashionpedia_folder, fashionstyle14_zip
from helpers_project import run, tiny_project
from helpers_ray import UPSTREAM, cell_logs, stage_runs

from fashionbg.study.plan.definition import load_study


def make_study(project: Path, fs14: Path, fp: Path) -> str:
    venv = Path(sys.executable).parent.parent
    return run(["make", "--no-print-directory", "study", f"VENV={venv}", "ENGINE=ray",
                "PRESET=paper", "SMOKE=1", f"FASHIONSTYLE14={fs14}", f"FASHIONPEDIA={fp}"],
               project)


@pytest.mark.timeout(2400)
def test_paper_smoke_run_on_the_real_layouts(tmp_path):
    fs14 = fashionstyle14_zip(tmp_path / "datasets/FashionStyle14_v1.zip")
    fp = fashionpedia_folder(tmp_path / "datasets/fashionpedia")
    project = tiny_project(tmp_path / "project")
    readme = (project / "README.md").read_text()

    out = make_study(project, fs14, fp)
    study = load_study(project / "study.yaml", yaml.safe_load((project / "params.yaml").read_text()))
    cells = study.cells("paper-smoke")
    n = len(cells)
    assert n == 16 and {c.arm.task for c in cells} == {"classify", "semantic", "instance"}
    assert f"pre-flight passed for {n} cells" in out and f"[{n}/{n}] done, 0 failed" in out

    runs = stage_runs(project)   # in the upstream runs' and the cells' logs
    assert {stage: runs.get(stage) for stage in UPSTREAM} == dict.fromkeys(UPSTREAM, 2), runs
    assert len(cell_logs(project)) == n

    report = (project / "reports/study-paper-smoke.md").read_text()
    assert f"{n} cells read from the experiments, 0 not run yet" in report
    assert "make study PRESET=paper SMOKE=1" in report
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.splitlines()}
    for claim in study.claims:
        row = rows[claim.claim]
        difference = row.split(" | ")[2]
        assert "not run" not in row and any(ch.isdigit() for ch in difference), row
    assert (project / "README.md").read_text() == readme   # a smoke run leaves it alone

    assert f"{n} cells: {n} already run, 0 to run" in make_study(project, fs14, fp)
