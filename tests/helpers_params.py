"""The repository's params.yaml, with changes, for tests that run stages on their own data."""
import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def params_with(**sections: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with the given keys of each section replaced."""
    params = copy.deepcopy(PARAMS)
    for name, changes in sections.items():
        params[name].update(changes)
    return params
