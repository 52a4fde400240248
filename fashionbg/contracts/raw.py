"""The `data/raw/` contract every source writes and every later stage reads.

Layout (paths in index.csv are relative to the raw dir):
    images/...        photos as shipped by the source (JPEG/PNG), byte-for-byte when they are
                      upright 8-bit RGB; otherwise converted by fashionbg.ingest.hygiene (EXIF
                      orientation applied, RGB) and re-encoded (JPEG q95, or PNG)
    masks/...         optional semantic masks, PNG, one class id per pixel (0 = background,
                      255 = no ground truth, e.g. COCO crowd regions), in the upright frame
    index.csv         path,split,label,mask  (label/mask empty where the source has none)
    classes.json      {"labels": [...], "mask_classes": [...]}  (mask_classes[0] = "background")
    quarantine.csv    path,reason  for every file the source refused
    summary.json      counts, refusals by reason, the tasks the source supports, and
                      provenance (e.g. sha256 of every archive used)
    instances.json    COCO-like sources only: the instance annotations in COCO format, for
                      instance segmentation. images[].file_name is the index path
                      ("images/..."), width/height are those of the stored (upright) image;
                      annotations keep segmentation (polygons or RLE as given, converted to RLE
                      only where EXIF orientation moved the pixels), bbox, area, category_id,
                      iscrowd and any extra fields (Fashionpedia's attribute_ids); categories
                      gain "mask_class", their class id in masks/ (0 = not drawn there).
"""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from fashionbg.contracts.codes import SPLITS
from fashionbg.core.errors import UserError
from fashionbg.core.io import atomic_file, read_json, write_csv, write_json

INDEX_COLUMNS = ("path", "split", "label", "mask")
QUARANTINE_COLUMNS = ("path", "reason")


@dataclass(frozen=True)
class IndexRow:
    path: str
    split: str
    label: str
    mask: str


@dataclass
class RawWriter:
    """Collects images, masks and refusals for one source, then writes the index files."""

    root: Path
    rows: list[IndexRow] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        (self.root / "masks").mkdir(parents=True, exist_ok=True)

    def add_image(self, rel: str, image: Image.Image | bytes, split: str, label: str = "",
                  mask: np.ndarray | None = None, quality: int = 92) -> IndexRow:
        """Store one photo (a PIL image is saved by its suffix; bytes are written as they are)."""
        target = self._image_target(rel, split)
        if isinstance(image, bytes):
            target.write_bytes(image)
        else:
            image.save(target, quality=quality) if target.suffix.lower() in (".jpg", ".jpeg") \
                else image.save(target)
        return self._add_row(rel, split, label, mask)

    def add_file(self, rel: str, source: Path, split: str, label: str = "",
                 mask: np.ndarray | None = None, move: bool = False) -> IndexRow:
        """Store a photo file byte-for-byte: moved (a staging copy of ours) or copied."""
        target = self._image_target(rel, split)
        if move:
            shutil.move(source, target)
        else:
            shutil.copyfile(source, target)
        return self._add_row(rel, split, label, mask)

    def _image_target(self, rel: str, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        return self._target("images", rel)

    def _target(self, folder: str, rel: str) -> Path:
        """Where `rel` goes under `folder/`; a name from the data never leaves it."""
        _confined(f"{self.root.name}/{folder}", f"{folder}/{rel}", folder)
        target = self.root / folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _add_row(self, rel: str, split: str, label: str, mask: np.ndarray | None) -> IndexRow:
        mask_rel = ""
        if mask is not None:
            mask_rel = str(Path(rel).with_suffix(".png"))
            self.write_mask(mask_rel, mask)
        row = IndexRow(f"images/{rel}", split, label, f"masks/{mask_rel}" if mask_rel else "")
        self.rows.append(row)
        return row

    def write_instances(self, coco: dict[str, Any]) -> None:
        """instances.json: COCO instance annotations for the stored images (see above)."""
        with atomic_file(self.root / "instances.json", "w") as f:
            json.dump(coco, f, separators=(",", ":"))  # compact: it can hold 100k+ polygons

    def write_mask(self, rel: str, mask: np.ndarray) -> None:
        if mask.dtype != np.uint8 or mask.ndim != 2:
            raise ValueError("a mask must be a 2-D uint8 array of class ids")
        Image.fromarray(mask, mode="L").save(self._target("masks", rel))

    def quarantine(self, path: str, reason: str) -> None:
        self.refused.append((path, reason))

    def finish(self, labels: list[str], mask_classes: list[str],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write index.csv, classes.json, quarantine.csv and summary.json; return the summary."""
        write_csv(self.root / "index.csv", INDEX_COLUMNS,
                  [(r.path, r.split, r.label, r.mask) for r in self.rows])
        write_csv(self.root / "quarantine.csv", QUARANTINE_COLUMNS, self.refused)
        write_json(self.root / "classes.json", {"labels": labels, "mask_classes": mask_classes})
        summary: dict[str, Any] = {
            "images": len(self.rows),
            "refused": len(self.refused),
            "refused_by_reason": dict(Counter(reason_kind(r) for _, r in self.refused)),
            "splits": {s: sum(r.split == s for r in self.rows) for s in SPLITS},
            **(extra or {}),
        }
        write_json(self.root / "summary.json", summary)
        return summary


def reason_kind(reason: str) -> str:
    """The kind of a refusal ("truncated or corrupt: ..." → "truncated or corrupt")."""
    return reason.split(":", 1)[0]


def read_index(raw_dir: Path) -> list[IndexRow]:
    """The rows of index.csv, each checked: an index pulled from a remote is untrusted, and its
    paths decide where later stages read and write."""
    index = Path(raw_dir) / "index.csv"
    try:
        with open(index, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
                raise UserError(f"{index} must have the columns {','.join(INDEX_COLUMNS)}; "
                                "run the download stage again")
            rows = [IndexRow(r["path"], r["split"], r["label"], r["mask"]) for r in reader]
    except FileNotFoundError as err:
        raise UserError(f"{index} does not exist; run the download stage first") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{index} is not a readable CSV file ({err}); run the download stage "
                        "again") from err
    for line, row in enumerate(rows, start=2):
        _check_row(index, line, row)
    return rows


def _check_row(index: Path, line: int, row: IndexRow) -> None:
    where = f"{index} line {line}"
    if row.split not in SPLITS:
        raise UserError(f"{where}: split {row.split!r} is not one of {', '.join(SPLITS)}")
    for value, folder in ((row.path, "images"), (row.mask, "masks")):
        if value or folder == "images":
            _confined(where, value, folder)


def _confined(where: str, value: str, folder: str) -> None:
    """A relative path inside `folder/`, with no `..`, absolute or empty parts."""
    path = PurePosixPath(value)
    if (path.is_absolute() or "\\" in value or len(path.parts) < 2 or path.parts[0] != folder
            or any(part in ("..", ".", "") for part in value.split("/"))
            or value != value.encode("utf-8", "replace").decode("utf-8")):
        raise UserError(f"{where}: path {value!r} is not allowed; expected a relative path "
                        f"inside {folder}/ without '..', in UTF-8")


def read_classes(raw_dir: Path) -> dict[str, list[str]]:
    """classes.json: {"labels": [...], "mask_classes": [...]}, both lists of names."""
    path = Path(raw_dir) / "classes.json"
    classes = read_json(path)
    if not (isinstance(classes, dict) and all(
            isinstance(classes.get(k), list) and all(isinstance(n, str) for n in classes[k])
            for k in ("labels", "mask_classes"))):
        raise UserError(f"{path} must hold lists of names 'labels' and 'mask_classes'; run the "
                        "download stage again")
    return classes


def label_codes(rows: list[IndexRow], labels: list[str], index: Path) -> np.ndarray:
    """Each row's class as an index into `labels`, -1 for rows without one."""
    code = {name: i for i, name in enumerate(labels)}
    for row in rows:
        if row.label and row.label not in code:
            raise UserError(f"{index}: the label {row.label!r} of {row.path} is not one of the "
                            "classes in classes.json; run the download stage again")
    return np.array([code[r.label] if r.label else -1 for r in rows], dtype=np.int64)


@dataclass(frozen=True)
class SourceResult:
    """What a source tells the download stage once it has filled a RawWriter."""

    labels: list[str]
    mask_classes: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
