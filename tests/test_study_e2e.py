"""A tiny study through DVC's real experiment queue (conftest's tiny_queue_study: one arm, both
variants, two seeds), then one more seed. The interactions of two arms are read from the same
experiments in the paper preset's smoke run (test_paper_smoke), on Ray."""
import re
import sys

import pytest
from helpers_project import copy_baseline, run
from helpers_ray import tiny_preset

from fashionbg.study.read.stats import VERDICTS


def claim_rows(report: str) -> dict[str, dict[str, str]]:
    """The claims table of a study report: each claim's cells by column header."""
    lines = report.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("| claim of the paper |"))
    header = [cell.strip() for cell in lines[top].strip("|").split("|")]
    rows = {}
    for line in lines[top + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["claim of the paper"]] = cells
    return rows


def study(project, *args: str) -> str:
    engine = ["--engine", "queue"] if args[0] == "run" else []
    return run([sys.executable, "-m", "fashionbg.study", *args, *engine, "--preset", "tiny"],
               project)


def assert_times(log: str, cells: int) -> None:
    """Each cell's seconds before, in and after its stages, read by the queue from DVC's
    executors, and the summary: in the study's wall time, the stages hold most of it."""
    spans = re.findall(r"cell (\S+) ended \(([\d.]+) s before its stages, ([\d.]+) s in them, "
                       r"([\d.]+) s after\)", log)
    assert len({name for name, *_ in spans}) == len(spans) == cells, log
    summary = re.search(r"(\d+) cells in (\d+) s: (\d+) s before their stages \(clone, "
                        r"checkout\), (\d+) s in them, (\d+) s after \(publish\); CPUs busy "
                        r"in stages (\d+)% of the time", log)
    assert summary, log
    count, wall, before, stages, after, busy = map(int, summary.groups())
    assert count == cells and 0 < before + stages + after <= wall
    assert stages > before and stages > after and 0 < busy <= 100
    assert all(float(s) > 0 for _, _, s, _ in spans)   # every cell trained or evaluated


@pytest.mark.timeout(1500)
def test_tiny_study_through_the_queue(tmp_path, tiny_queue_study):
    first = (tiny_queue_study.parent / "run.log").read_text()   # conftest ran its 4 cells
    assert "4 cells: 0 already run, 4 to run" in first and "[4/4] done, 0 failed" in first
    assert_times(first, 4)
    project = copy_baseline(tiny_queue_study, tmp_path / "project")
    assert "4 cells: 4 already run, 0 to run" in study(project, "run")   # nothing runs twice

    report = study(project, "report")
    claims = claim_rows(report)
    claim = claims["removal helps simple, shallow networks trained from scratch (up to +5 % top-1)"]
    assert claim["measured as"] == "gain of `shallow`"
    assert claim["deciding test: p unadjusted (Holm)"].startswith("δ ≠ 0: ")      # its two-sided test, p (Holm)
    assert claim["verdict"].strip("*") in VERDICTS, claim["verdict"]   # one word of the set
    arm = next(line for line in report.splitlines() if line.startswith("| `shallow`"))
    assert "| classify: top1 | 2 |" in arm
    assert (project / "reports/study/forest.png").stat().st_size > 0
    assert "4 cells read from the experiments" in (project / "README.md").read_text()

    tiny_preset(project, [0, 1, 2])                                        # one more seed
    run(["git", "commit", "-qam", "a third seed"], project)
    assert "6 cells: 4 already run, 2 to run" in study(project, "run")
    assert "| classify: top1 | 3 |" in study(project, "report")

    tiny_preset(project, [0, 1, 2, 3])           # SEQUENTIAL=1: looks at 3 seeds, then at 4
    run(["git", "commit", "-qam", "a fourth seed, read sequentially"], project)
    out = study(project, "run", "--sequential")
    report = study(project, "report", "--sequential")
    decided = re.search(r"^\| shallow \| \*?\*?(\w+)\*?\*? \| (.+) \|$", report, re.MULTILINE)
    assert decided, report
    if decided.group(2) == "1 (3)":               # decided at the first look: seed 3 saved
        assert "to run" not in out.split("sequential:")[-1], out
        assert "1 of 2 looks taken" not in report and "6 of 8 cells used, 25% saved" in report
    else:                                         # open after 3 seeds: the fourth ran
        assert decided.group(2) in ("2 (4)", "not decided"), report
        assert "8 cells: 6 already run, 2 to run" in out, out
        assert "2 of 2 looks taken; 8 of 8 cells used, 0% saved" in report, report
