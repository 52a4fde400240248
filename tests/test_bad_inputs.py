"""benchmarks/bad_inputs.py's table as a test, so that its "0 silent wrong results" stays true:
every case run in this process (no torch import per case): exit 2 with one `error:` line, or
exit 0 only where the table allows it (bad files quarantined, the rest goes on), nothing
written beside the project and no code run from the data. The cases the table runs under a
file-size limit or on two processes need a subprocess of their own: test_trust and
test_launch keep those promises. The study commands and make targets of the table
(bad_inputs.COMMANDS) are not stages: test_trust, test_study_inputs and test_preflight run
them as users do."""
import sys
import tempfile
from pathlib import Path

import pytest
from test_properties import run_stage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bad_inputs  # noqa: E402

SUBPROCESS_ONLY = set(bad_inputs.FILE_SIZE_LIMIT) | {
    "the same on 2 processes (every rank finds it)"}
# remove_background's cases load the real U²-Net weights: those are slow (tests/conftest.py).
CASES = [pytest.param(name, stage, setup, id=f"{stage}: {name}",
                      marks=[pytest.mark.slow] if stage == "remove_background" else [])
         for name, stage, setup in bad_inputs.CASES
         if name not in SUBPROCESS_ONLY and stage not in bad_inputs.COMMANDS]


@pytest.mark.parametrize("name, stage, setup", CASES)
def test_bad_input_is_one_line_or_quarantined(name, stage, setup, request):
    if stage == "remove_background":
        request.getfixturevalue("u2netp_home")      # bad_inputs.weights copies them from there
    with tempfile.TemporaryDirectory() as outer:
        project = Path(outer) / "project"
        project.mkdir()
        setup(project)
        before = sorted(Path(outer).iterdir())
        code, err = run_stage(project, stage)
        assert code == 2 or (code == 0 and name in bad_inputs.MAY_SUCCEED), (code, err)
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and err.strip().endswith(errors[0]), err
        assert sorted(Path(outer).iterdir()) == before
        assert not (project / "PWNED").exists() and not (project / "pwned").exists()
        assert not Path("/tmp/evil.jpg").exists()
