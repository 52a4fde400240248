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
