"""The report's statistics on simulated studies with known truth (python -m fashionbg.study
calibrate), at a small number of studies: bounds loose enough for 20 studies per scenario, and
tight enough that a procedure ignoring the seeds' variance (coverage near 60 % when seeds vary
most) or an uncorrected one fails them."""
import subprocess
import sys
from pathlib import Path

import pytest

from fashionbg.study.calibrate import REGIMES, calibrate, false_verdict, table
from fashionbg.study.definition import Claim, load_study
from fashionbg.study.report import ClaimResult

ROOT = Path(__file__).resolve().parents[1]


def test_calibration_covers_and_controls_its_error_rates():
    study = load_study(ROOT / "study.yaml")
    rows = calibrate(20, study, designs=((3, 96), (2, 96)))
    assert [(r.design, r.regime) for r in rows] == [(d, g) for d in ((3, 96), (2, 96))
                                                    for g in REGIMES]
    for r in rows:
        assert r.studies == 60
        assert 0.88 <= r.coverage.rate <= (0.995 if r.design[0] == 3 else 1), table(rows, study)
        assert max(f.rate for f in r.fwer.values()) <= 0.2, table(rows, study)
        assert r.false_minimal.rate <= 0.15, table(rows, study)
        assert 0 <= r.power.rate <= 1
    assert all(r.power.rate == 0 for r in rows if r.design[0] == 2)   # no verdict below 3
    assert calibrate(20, study, designs=((3, 96), (2, 96))) == rows   # seeded


@pytest.mark.parametrize("expect, verdict, truth, false", [
    ("positive", "minimal", 0.022, True), ("positive", "minimal", 0.0, False),
    ("positive", "supported", 0.0, True), ("positive", "refuted", 0.05, True),
    ("negative", "supported", -0.01, False), ("not_positive", "supported", 0.022, True),
    ("not_positive", "refuted", 0.02, True), ("equivalent", "supported", -0.022, True),
    ("equivalent", "refuted", 0.01, True), ("equivalent", "inconclusive", 0.5, False),
])
def test_false_verdicts_are_those_the_truth_contradicts(expect, verdict, truth, false):
    claim = Claim("c", "c", "gain", "a", None, expect)
    assert false_verdict(ClaimResult(claim, None, 0.02, "", None, None, verdict), truth) == false


def test_calibrate_command_prints_the_table_and_refuses_a_bad_count():
    run = subprocess.run([sys.executable, "-m", "fashionbg.study", "calibrate", "--studies",
                          "10"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| 3 | 1,000 | seeds vary more than images | 30 |" in run.stdout
    assert " ± " in run.stdout    # Monte-Carlo errors
    bad = subprocess.run([sys.executable, "-m", "fashionbg.study", "calibrate", "--studies",
                          "3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--studies '3' is not allowed; expected an integer from 10 to 100000" in bad.stderr
