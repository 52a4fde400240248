"""The `data/prepared/<variant>/` training cache: decoded once, read by every training stage.

    images.npy   uint8 (N, H, W, 3)   RGB, EXIF-oriented, resized to data.image_size
    masks.npy    uint8 (N, H, W)      semantic class ids (only when the source has masks;
                                      255 = no ground truth for that image, to be ignored)
    alpha.npy    uint8 (N, H, W)      the rembg alpha (rembg variant only)
    labels.npy   int64 (N,)           index into meta["labels"], -1 where there is no label
    splits.npy   uint8 (N,)           0 train, 1 val, 2 test (same rows in every variant)
    meta.json    {"variant", "labels", "mask_classes", "image_size", "paths", "has_masks", "fill"}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionbg.contracts.codes import SPLITS
from fashionbg.core.errors import UserError
from fashionbg.core.io import atomic_dir, read_json, write_json


@dataclass(frozen=True)
class Prepared:
    images: np.ndarray
    masks: np.ndarray | None
    alpha: np.ndarray | None
    labels: np.ndarray
    splits: np.ndarray
    meta: dict[str, Any]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == SPLITS.index(split))


def load_prepared(directory: Path) -> Prepared:
    """Memory-map the arrays so a large cache is paged in only as batches need it."""
    directory = Path(directory)
    if not (directory / "meta.json").exists():
        raise UserError(f"{directory} holds no prepared cache; run the prepare stage first")
    try:   # a cache pulled from a remote is untrusted: np.load never unpickles (the default)
        meta = read_json(directory / "meta.json")
        has_masks = meta["has_masks"] if isinstance(meta, dict) else None
        prepared = Prepared(
            images=np.load(directory / "images.npy", mmap_mode="r"),
            masks=np.load(directory / "masks.npy", mmap_mode="r") if has_masks else None,
            alpha=np.load(directory / "alpha.npy", mmap_mode="r")
            if (directory / "alpha.npy").exists() else None,
            labels=np.load(directory / "labels.npy"),
            splits=np.load(directory / "splits.npy"),
            meta=meta,
        )
        problem = _inconsistency(prepared)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
        problem = str(err)
    if problem:
        raise UserError(f"{directory} is not a usable prepared cache ({problem}); run the "
                        "prepare stage again")
    return prepared


def _inconsistency(p: Prepared) -> str:
    """What is wrong with a loaded cache's shapes, types and codes, or ""."""
    meta, n = p.meta, len(p.splits)
    if not (isinstance(meta, dict) and isinstance(meta.get("labels"), list)
            and isinstance(meta.get("paths"), list) and len(meta["paths"]) == n
            and isinstance(meta.get("variant"), str)):
        return "meta.json needs variant, labels and one path per row"
    if p.images.dtype != np.uint8 or p.images.ndim != 4 or p.images.shape[0] != n \
            or p.images.shape[3] != 3:
        return f"images.npy is {p.images.dtype} {p.images.shape}, expected uint8 ({n}, H, W, 3)"
    for name, array in (("masks", p.masks), ("alpha", p.alpha)):
        if array is not None and (array.dtype != np.uint8
                                  or array.shape != p.images.shape[:3]):
            return f"{name}.npy is {array.dtype} {array.shape}, expected uint8 " \
                   f"{p.images.shape[:3]}"
    if p.labels.shape != (n,) or n and not (
            p.labels.min() >= -1 and p.labels.max() < len(meta["labels"])
            and p.splits.max() < len(SPLITS)):
        return "labels.npy or splits.npy do not match the rows and codes of meta.json"
    return ""


def check_same_rows(a: Prepared, b: Prepared) -> None:
    """Cross-variant scores are only meaningful on the same photos with the same ground truth."""
    same = (a.meta["paths"] == b.meta["paths"] and np.array_equal(a.splits, b.splits)
            and np.array_equal(a.labels, b.labels) and (a.masks is None) == (b.masks is None)
            and (a.masks is None or np.array_equal(a.masks, b.masks)))
    if not same:
        raise UserError(f"the {a.meta['variant']} and {b.meta['variant']} prepared caches do not "
                        "hold the same rows and ground truth; re-run the prepare stage")


def save_prepared(directory: Path, images: np.ndarray, masks: np.ndarray | None,
                  labels: np.ndarray, splits: np.ndarray, meta: dict[str, Any],
                  alpha: np.ndarray | None = None) -> None:
    with atomic_dir(Path(directory)) as tmp:
        np.save(tmp / "images.npy", images)
        if masks is not None:
            np.save(tmp / "masks.npy", masks)
        if alpha is not None:
            np.save(tmp / "alpha.npy", alpha)
        np.save(tmp / "labels.npy", labels.astype(np.int64))
        np.save(tmp / "splits.npy", splits.astype(np.uint8))
        write_json(tmp / "meta.json", {**meta, "has_masks": masks is not None})
