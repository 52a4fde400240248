"""Instance targets for Mask R-CNN, built per row on demand (a large set never sits in memory).

Two sources of ground truth:
- COCO annotations in `data/raw/instances.json` (file_name = the row's index path), rasterised
  with pycocotools and resized to the prepared size;
- otherwise the semantic masks: each connected component of a chosen class is one instance.
Either way the targets depend on the rows only, never on the variant's images.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from fashionbg.contracts.codes import IGNORE
from fashionbg.contracts.prepared import Prepared
from fashionbg.core.errors import UserError
from fashionbg.segment.params import select_instance_classes

COCO_FILE = "instances.json"


class InstanceTargets(Protocol):
    source: str
    class_names: list[str]   # Mask R-CNN label k (from 1) is class_names[k - 1]

    def __call__(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Bool masks (N, H, W) and int64 labels (N,) in 1..len(class_names) for one row."""
        ...

    def has_truth(self, row: int) -> bool:
        """False for rows the annotations do not cover (no instances there means unknown)."""
        ...


def components(mask: np.ndarray, class_ids: list[int], min_area: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (8-connected) of each class id in a semantic mask; label k + 1 for
    class_ids[k]; components under `min_area` pixels are dropped."""
    found: list[np.ndarray] = []
    labels: list[int] = []
    for label, class_id in enumerate(class_ids, start=1):
        regions, count = ndimage.label(mask == class_id, structure=np.ones((3, 3), bool))
        if not count:
            continue
        areas = np.bincount(regions.ravel(), minlength=count + 1)
        for region in np.flatnonzero(areas[1:] >= min_area) + 1:
            found.append(regions == region)
            labels.append(label)
    if not found:
        return np.zeros((0, *mask.shape), bool), np.zeros(0, np.int64)
    return np.stack(found), np.asarray(labels, np.int64)


class ComponentTargets:
    source = "masks"

    def __init__(self, masks: np.ndarray, mask_classes: list[str],
                 wanted: tuple[str, ...] | None, min_area: int) -> None:
        self.masks = masks
        self.class_names = select_instance_classes(wanted, mask_classes[1:])
        self.class_ids = [mask_classes.index(name) for name in self.class_names]
        self.min_area = min_area

    def __call__(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        return components(np.asarray(self.masks[row]), self.class_ids, self.min_area)

    def has_truth(self, row: int) -> bool:
        return bool((np.asarray(self.masks[row]) != IGNORE).any())


class CocoTargets:
    """Instances of COCO annotations, held as numpy arrays: each kept annotation's compressed
    RLE in one byte buffer, its label, and each row's range of annotations. Forked loader
    workers read these pages without writing to them, whereas pycocotools' dicts and polygon
    lists would be copied into every worker as reading them updates their reference counts."""

    source = "coco"

    def __init__(self, path: Path, row_paths: list[str], size: tuple[int, int],
                 wanted: tuple[str, ...] | None, min_area: int) -> None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
                coco = COCO(str(path))
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
            raise UserError(f"{path} is not a readable COCO annotation file: {err}") from err
        categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        names = [c["name"] for c in categories]
        self.class_names = select_instance_classes(wanted, names)
        label_of = {c["id"]: self.class_names.index(c["name"]) + 1
                    for c in categories if c["name"] in self.class_names}
        by_file = {image["file_name"]: image["id"] for image in coco.dataset["images"]}
        image_ids = [by_file.get(p) for p in row_paths]
        if row_paths and all(i is None for i in image_ids):
            raise UserError(f"no image in {path} has a file_name matching the prepared rows "
                            f"(e.g. {row_paths[0]!r})")
        self.covered = np.array([i is not None for i in image_ids], bool)
        self.full_size = np.zeros((len(row_paths), 2), np.int64)    # the photo's height, width
        counts: list[bytes] = []
        labels: list[int] = []
        starts = [0]
        for row, image_id in enumerate(image_ids):
            if image_id is not None:
                image = coco.imgs[image_id]
                self.full_size[row] = image["height"], image["width"]
                for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id],
                                                        catIds=list(label_of))):
                    if ann.get("iscrowd", 0):   # crowd regions are "ignore" areas, not objects
                        continue
                    rle = coco.annToRLE(ann)["counts"]    # str where the file had one
                    counts.append(rle.encode() if isinstance(rle, str) else rle)
                    labels.append(label_of[ann["category_id"]])
            starts.append(len(labels))
        self.row_start = np.asarray(starts, np.int64)
        self.labels = np.asarray(labels, np.int64)
        self.rle_start = np.cumsum([0, *map(len, counts)], dtype=np.int64)
        self.rles = np.frombuffer(b"".join(counts), np.uint8)
        self.size = size
        self.min_area = min_area

    def has_truth(self, row: int) -> bool:
        return bool(self.covered[row])

    def __call__(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.size
        found: list[np.ndarray] = []
        labels: list[int] = []
        full_size = self.full_size[row].tolist()
        for ann in range(self.row_start[row], self.row_start[row + 1]):
            counts = self.rles[self.rle_start[ann]:self.rle_start[ann + 1]].tobytes()
            full = Image.fromarray(mask_utils.decode({"size": full_size, "counts": counts}) * 255)
            small = np.asarray(full.resize((width, height), Image.Resampling.NEAREST)) > 127
            if small.sum() >= self.min_area:
                found.append(small)
                labels.append(int(self.labels[ann]))
        if not found:
            return np.zeros((0, height, width), bool), np.zeros(0, np.int64)
        return np.stack(found), np.asarray(labels, np.int64)


def instance_targets(prepared: Prepared, raw_dir: Path, wanted: tuple[str, ...] | None,
                     min_area: int) -> InstanceTargets:
    """COCO annotations when the source wrote them, else components of the semantic masks."""
    coco_path = Path(raw_dir) / COCO_FILE
    if coco_path.exists():
        size = tuple(prepared.images.shape[1:3])
        return CocoTargets(coco_path, prepared.meta["paths"], size, wanted, min_area)
    if prepared.masks is None:
        raise UserError("segment.task = instance needs instance annotations "
                        f"({coco_path}) or semantic masks; this data has neither")
    return ComponentTargets(prepared.masks, prepared.meta["mask_classes"], wanted, min_area)


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """xyxy boxes around bool masks (N, H, W), with pixel-edge coordinates (x2 = last col + 1),
    so a one-pixel-wide object still has positive width, as in COCO."""
    if not len(masks):
        return torch.zeros((0, 4), dtype=torch.float32)
    rows, cols = masks.any(2), masks.any(1)
    y1 = rows.float().argmax(1)
    y2 = masks.shape[1] - rows.flip(1).float().argmax(1)
    x1 = cols.float().argmax(1)
    x2 = masks.shape[2] - cols.flip(1).float().argmax(1)
    return torch.stack([x1, y1, x2, y2], 1).float()
