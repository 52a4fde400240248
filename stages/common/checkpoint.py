"""Checkpoints written atomically, so an interrupted save never leaves a truncated file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .io import atomic_file
from .params import UserError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_file(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not Path(path).exists():
        raise UserError(f"{path} does not exist; run the stage that trains it first")
    return torch.load(path, map_location="cpu", weights_only=False)
