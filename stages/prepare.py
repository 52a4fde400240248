"""Stage `prepare`: decode every usable raw image once into the original and rembg caches."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from .background.composite import composite, parse_fill
from .background.sod import alpha_path
from .common.params import UserError, load_params, section, size_pair, stage_main
from .datasets.decode import decode_all
from .datasets.prepared import save_prepared
from .datasets.raw import SPLITS, IndexRow, read_classes, read_index

RAW_DIR = Path("data/raw")
REMBG_DIR = Path("data/rembg")
OUT_DIR = Path("data/prepared")
log = logging.getLogger("prepare")


def usable_rows(rows: list[IndexRow]) -> tuple[list[IndexRow], list[str]]:
    """Rows rembg produced an alpha for; both variants keep exactly these, so splits match."""
    with open(REMBG_DIR / "failures.csv", newline="") as f:
        failed = {r["path"] for r in csv.DictReader(f)}
    return [r for r in rows if r.path not in failed], sorted(failed)


@stage_main
def main() -> None:
    params = load_params()
    size = size_pair(section(params, "data"), "data", "image_size")
    fill = parse_fill(section(params, "background").get("fill"))
    classes = read_classes(RAW_DIR)
    rows, excluded = usable_rows(read_index(RAW_DIR))
    if not rows:
        raise UserError(f"no usable images in {RAW_DIR} (rembg failed on {len(excluded)})")
    if excluded:
        log.warning("%d images left out of both variants because rembg failed on them "
                    "(listed in %s/failures.csv)", len(excluded), REMBG_DIR)

    images, masks, alphas = decode_all(
        [(RAW_DIR / r.path, RAW_DIR / r.mask if r.mask else None, REMBG_DIR / alpha_path(r.path))
         for r in rows], size)
    label_ids = {name: i for i, name in enumerate(classes["labels"])}
    labels = np.array([label_ids[r.label] if r.label else -1 for r in rows], dtype=np.int64)
    splits = np.array([SPLITS.index(r.split) for r in rows], dtype=np.uint8)
    meta = {"labels": classes["labels"], "mask_classes": classes["mask_classes"],
            "image_size": list(size), "paths": [r.path for r in rows],
            "excluded": excluded, "fill": list(fill)}

    save_prepared(OUT_DIR / "original", images, masks, labels, splits,
                  {**meta, "variant": "original"})
    save_prepared(OUT_DIR / "rembg", composite(images, alphas, fill), masks, labels, splits,
                  {**meta, "variant": "rembg"}, alpha=alphas)
    log.info("prepared %d images of %s for both variants", len(rows), size)


if __name__ == "__main__":
    main()
