"""The `data/prepared/<variant>/` training cache: decoded once, read by every training stage.

    images.npy   uint8 (N, H, W, 3)   RGB, EXIF-oriented, resized to data.image_size
    masks.npy    uint8 (N, H, W)      semantic class ids (only when the source has masks;
                                      255 = no ground truth for that image, to be ignored)
    alpha.npy    uint8 (N, H, W)      the rembg alpha (rembg variant only)
    labels.npy   int64 (N,)           index into meta["labels"], -1 where there is no label
    splits.npy   uint8 (N,)           0 train, 1 val, 2 test (same rows in every variant)
    meta.json    {"variant", "labels", "mask_classes", "image_size", "paths", "has_masks", "fill",
                 "person_fill"}
                 and, for the mixed_* variants, "background_rows": the row whose only_bg
                 background each row shows

One directory per variant of data.variants (data/prepared/<variant>/), all with the same rows.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from fashionbg.contracts.codes import SPLITS
from fashionbg.contracts.params import VARIANTS
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
    if p.labels.shape != (n,) or (n and not (
            p.labels.min() >= -1 and p.labels.max() < len(meta["labels"])
            and p.splits.max() < len(SPLITS))):
        return "labels.npy or splits.npy do not match the rows and codes of meta.json"
    return ""


def check_same_rows(a: Prepared, b: Prepared) -> None:
    """Cross-variant scores are only meaningful on the same photos with the same ground truth."""
    same = (a.meta["paths"] == b.meta["paths"] and np.array_equal(a.splits, b.splits)
            and np.array_equal(a.labels, b.labels) and (a.masks is None) == (b.masks is None)
            and (a.masks is None or (b.masks is not None and _equal_rows(a.masks, b.masks))))
    if not same:
        raise UserError(f"the {a.meta['variant']} and {b.meta['variant']} prepared caches do not "
                        "hold the same rows and ground truth; re-run the prepare stage")


def load_variants(root: Path, trained_on: str = "original") -> dict[str, Prepared]:
    """Every variant `prepare` built under `root`, in VARIANTS order, checked to hold the same
    rows and ground truth as the original photos; `trained_on`, a model's variant, must be
    among them."""
    built = {v: load_prepared(Path(root) / v) for v in VARIANTS
             if (Path(root) / v / "meta.json").exists()}
    for needed in dict.fromkeys(("original", trained_on)):
        if needed not in built:
            raise UserError(f"{Path(root) / needed} is not built; list {needed} in "
                            "data.variants and run the prepare stage again")
    for name, cache in built.items():
        if name != "original":
            check_same_rows(built["original"], cache)
    return built


def _equal_rows(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> bool:
    """np.array_equal a chunk of rows at a time, so memory-mapped arrays are never compared
    (nor their boolean result held) whole."""
    return a.shape == b.shape and all(np.array_equal(a[i:i + chunk], b[i:i + chunk])
                                      for i in range(0, len(a), chunk))


class NpyStream:
    """An .npy file written row by row: the header np.save writes, then the rows in order, so
    an array larger than memory is written in chunks and reads back with np.load(mmap_mode).
    Plain sequential writes, not a writable memmap: dirty mapped pages would count towards the
    writer's resident memory until unmapped."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: DTypeLike) -> None:
        self.shape, self.dtype, self.written = shape, np.dtype(dtype), 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": shape})

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.shape[1:] or rows.dtype != self.dtype:
            raise ValueError(f"rows {rows.shape} {rows.dtype} do not fit {self.shape} "
                             f"{self.dtype}")
        self.file.write(np.ascontiguousarray(rows).data)
        self.written += len(rows)

    def check_complete(self) -> None:
        if self.written != self.shape[0]:
            raise ValueError(f"{self.file.name}: wrote {self.written} of {self.shape[0]} rows")


class PreparedWriter:
    """Streams one variant's arrays: `append` chunks of rows in order."""

    def __init__(self, directory: Path, count: int, size: tuple[int, int], has_masks: bool,
                 has_alpha: bool) -> None:
        self.directory = directory
        shape = (count, *size)
        self.streams = {"images": NpyStream(directory / "images.npy", (*shape, 3), np.uint8)}
        if has_masks:
            self.streams["masks"] = NpyStream(directory / "masks.npy", shape, np.uint8)
        if has_alpha:
            self.streams["alpha"] = NpyStream(directory / "alpha.npy", shape, np.uint8)

    def append(self, images: np.ndarray, masks: np.ndarray | None = None,
               alpha: np.ndarray | None = None) -> None:
        for name, rows in (("images", images), ("masks", masks), ("alpha", alpha)):
            if (name in self.streams) != (rows is not None):
                raise ValueError(f"{self.directory}: {name} is "
                                 f"{'missing' if rows is None else 'not part of this cache'}")
            if rows is not None:
                self.streams[name].append(rows)


@contextmanager
def prepared_writer(directory: Path, size: tuple[int, int], labels: np.ndarray,
                    splits: np.ndarray, meta: dict[str, Any], has_masks: bool,
                    has_alpha: bool = False) -> Iterator[PreparedWriter]:
    """A writer for the rows of `labels` into a temp dir; when the block succeeds (every row
    appended) the cache is completed and replaces `directory` in one rename."""
    with atomic_dir(Path(directory)) as tmp:
        writer = PreparedWriter(tmp, len(labels), size, has_masks, has_alpha)
        try:
            yield writer
        finally:
            for stream in writer.streams.values():
                stream.file.close()
        for stream in writer.streams.values():
            stream.check_complete()
        np.save(tmp / "labels.npy", labels.astype(np.int64))
        np.save(tmp / "splits.npy", splits.astype(np.uint8))
        write_json(tmp / "meta.json", {**meta, "has_masks": has_masks})


def save_prepared(directory: Path, images: np.ndarray, masks: np.ndarray | None,
                  labels: np.ndarray, splits: np.ndarray, meta: dict[str, Any],
                  alpha: np.ndarray | None = None) -> None:
    """A whole cache from in-memory arrays (small data, tests)."""
    with prepared_writer(directory, images.shape[1:3], labels, splits, meta,
                         masks is not None, alpha is not None) as writer:
        writer.append(images, masks, alpha)
