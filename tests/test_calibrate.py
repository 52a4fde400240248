"""The report's statistics on simulated studies with known truth (python -m fashionbg.study
calibrate), at a small number of studies: bounds loose enough for 20 studies per scenario, and
tight enough that a procedure ignoring the seeds' variance (coverage near 60 % when seeds vary
most) or an uncorrected one fails them."""
import subprocess
import sys
from pathlib import Path

from fashionbg.study.calibrate import REGIMES, calibrate, table
from fashionbg.study.definition import load_study

ROOT = Path(__file__).resolve().parents[1]


def test_calibration_covers_and_controls_its_error_rates():
    study = load_study(ROOT / "study.yaml")
    rows = calibrate(20, study)
    assert [r.regime for r in rows] == list(REGIMES)
    for r in rows:
        assert r.studies == 60
        assert 0.88 <= r.coverage <= 0.995, table(rows, study)
        assert r.fwer <= 0.2 and r.false_equivalence <= 0.15, table(rows, study)
        assert 0 <= r.power <= 1
    assert calibrate(20, study) == rows    # seeded: the same figures every run


def test_calibrate_command_prints_the_table_and_refuses_a_bad_count():
    run = subprocess.run([sys.executable, "-m", "fashionbg.study", "calibrate", "--studies",
                          "10"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| seeds vary more than images | 30 |" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "fashionbg.study", "calibrate", "--studies",
                          "3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--studies '3' is not allowed; expected an integer from 10 to 100000" in bad.stderr
