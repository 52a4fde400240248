import os
from pathlib import Path

import pytest

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


# `make test-quick` (the inner loop) deselects these: each runs stages, DVC, torchrun, Ray or
# the real U²-Net in subprocesses, minutes in all on 2 cores. `make test` runs everything.
SLOW_MODULES = {"test_augment_on_device", "test_bench_gpu", "test_distributed", "test_faults",
                "test_launch", "test_paper_smoke", "test_pipeline_e2e", "test_readme",
                "test_stage_params", "test_study_e2e", "test_study_interrupt", "test_study_ray",
                "test_study_upstream"}
SLOW_FIXTURES = {"u2netp_session"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if item.module else ""
        if (module in SLOW_MODULES or "end_to_end" in item.name
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)
