"""The `data/rembg/` contract: one alpha mask per raw image, and the images rembg failed on.

    masks/<rel>.png   uint8 alpha (255 = object) of `images/<rel>`, at the photo's own size
    failures.csv      path,reason  for every image without a mask
"""
from __future__ import annotations

import csv
from pathlib import Path

FAILURES = "failures.csv"
FAILURE_COLUMNS = ("path", "reason")


def alpha_path(image_path: str) -> str:
    """Where the alpha of `images/<rel>` lives inside the rembg output: `masks/<rel>.png`."""
    rel = Path(image_path).relative_to("images")
    return str(Path("masks") / rel.with_suffix(".png"))


def read_failures(rembg_dir: Path) -> set[str]:
    """Index paths of the images rembg produced no alpha for."""
    with open(Path(rembg_dir) / FAILURES, newline="") as f:
        return {row["path"] for row in csv.DictReader(f)}
