"""Source `coco`: COCO instance-segmentation JSON(s) plus their images; the base of `fashionpedia`.

`data.path` (or the archive at `data.url`) holds one or more COCO JSON files and the images
they name, anywhere below it. A JSON whose name says train/val/test gives that split (rules in
splits.complete_splits); otherwise splits are drawn from data.split and data.seed.

Semantic masks (masks/, class ids from `data.mask_grouping`):
- `category`: one class per category; `supercategory`: one per COCO supercategory;
  `binary`: one foreground class.
- Overlaps: instances are painted from the largest to the smallest (pixel area, ties by
  file order), so the smaller object on top (a belt on a dress, a bag on a coat) keeps its
  class. Crowd annotations (iscrowd = 1) are painted 255, "no ground truth", as COCO evaluation
  ignores them.
Images get no classification label: an image-level class is not defined by COCO annotations.
Annotations are re-keyed to the stored images in data/raw/instances.json (see raw.py).
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from fashionbg.contracts.codes import IGNORE, SPLITS
from fashionbg.contracts.raw import RawWriter, SourceResult
from fashionbg.core.errors import UserError
from fashionbg.core.params import choice, is_number
from fashionbg.ingest.hygiene import CheckedImage, RefusedImage, orient_array
from fashionbg.ingest.intake import Candidate, ingest, is_junk
from fashionbg.ingest.origin import Origin, materialize, parse_origin
from fashionbg.ingest.splits import Sampling, complete_splits, sampling, subsample

log = logging.getLogger(__name__)
GROUPINGS = ("category", "supercategory", "binary")
MAX_JSON_FILES = 20
_SPLIT_WORD = re.compile(r"(?:^|[^a-z])(train|validation|valid|val|test)(?:[^a-z]|$)")
_SPLIT_OF_WORD = {"train": "train", "validation": "val", "valid": "val", "val": "val",
                  "test": "test"}


@dataclass(frozen=True)
class CocoConfig:
    origin: Origin
    sampling: Sampling
    grouping: str


@dataclass
class CocoFile:
    path: Path
    split: str                                   # official split named by the file, or ""
    images: list[dict[str, Any]]
    annotations: dict[Any, list[dict[str, Any]]]  # by image id
    categories: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)  # info, licenses, attributes, ...


@dataclass(frozen=True)
class CocoItem:
    file: CocoFile
    image: dict[str, Any]
    split: str

    @property
    def key(self) -> str:
        return f"{self.file.path.name}:{self.image['file_name']}"


@dataclass(frozen=True)
class MaskScheme:
    names: list[str]           # mask_classes; names[0] = "background"
    class_of: dict[Any, int]   # category id → class id in masks/ (absent: not drawn)


def validate(data: dict[str, Any]) -> CocoConfig:
    return CocoConfig(parse_origin(data, "coco", homepage="your COCO-format dataset"),
                      sampling(data), grouping(data))


def grouping(data: dict[str, Any]) -> str:
    return choice(data, "data", "mask_grouping", GROUPINGS)


def build(config: CocoConfig, writer: RawWriter) -> SourceResult:
    with materialize(config.origin) as tree:
        files = find_coco_files(tree.root)
        items, how = plan(files, config.sampling, writer)
        finder = ImageFinder([(tree.root, tree.owned)])
        scheme = mask_scheme(files[0].categories, config.grouping)
        return build_coco(writer, items, finder.for_item, scheme, {
            "source": "coco", "tasks": ["semantic_segmentation", "instance_segmentation"],
            "classification": "none: COCO annotations define no image-level class",
            "splits_from": how, "provenance": tree.provenance})


def split_word(name: str) -> str:
    """The split a file or folder name mentions ("instances_val2017.json" → "val"), or ""."""
    match = _SPLIT_WORD.search(Path(name).stem.lower())
    return _SPLIT_OF_WORD[match.group(1)] if match else ""


def find_coco_files(root: Path) -> list[CocoFile]:
    """Every COCO instance JSON below `root`, its official split taken from its name."""
    paths = sorted(p for p in root.rglob("*.json")
                   if not any(is_junk(s) for s in p.relative_to(root).parts))
    if len(paths) > MAX_JSON_FILES:
        raise UserError(f"{root} holds {len(paths)} JSON files; point data.path at the folder "
                        "with the COCO annotation file(s) and their images")
    found, skipped = [], []
    for path in paths:
        try:
            found.append(load_coco(path, split_word(path.name)))
        except UserError as err:
            skipped.append(str(err))
    if not found:
        raise UserError(f"no COCO instance file under {root}" +
                        (": " + "; ".join(skipped) if skipped else " (no JSON files at all)"))
    for reason in skipped:
        log.warning("skipped: %s", reason)
    return found


def load_coco(path: Path, split: str) -> CocoFile:
    """Read and structurally check a COCO instance JSON; UserError naming the file if broken."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read COCO file {path}: {err}") from None
    except RecursionError:
        raise UserError(f"cannot read COCO file {path}: nested too deeply to be COCO "
                        "annotations") from None
    ok = (isinstance(data, dict) and isinstance(data.get("images"), list)
          and isinstance(data.get("annotations"), list)
          and isinstance(data.get("categories"), list)
          and all(isinstance(c, dict) and "id" in c and "name" in c for c in data["categories"]))
    if not ok:
        raise UserError(f"{path} is not a COCO instance file: it needs lists 'images', "
                        "'annotations' and 'categories' (each category with id and name)")
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and "image_id" in ann:
            by_image[ann["image_id"]].append(ann)
    extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    log.info("%s: %d images, %d annotations, %d categories", path.name, len(data["images"]),
             len(data["annotations"]), len(data["categories"]))
    return CocoFile(path, split, data["images"], by_image, data["categories"], extra)


def plan(files: list[CocoFile], opts: Sampling, writer: RawWriter,
         ) -> tuple[list[CocoItem], str]:
    """Which images go in, in which split: official splits completed, then the subsample."""
    _check_same_categories(files)
    by_key: dict[str, tuple[CocoFile, dict[str, Any]]] = {}
    for coco in files:
        for n, image in enumerate(coco.images):
            if not (isinstance(image, dict) and isinstance(image.get("file_name"), str)
                    and "id" in image):
                writer.quarantine(f"{coco.path.name}#images[{n}]",
                                  "malformed: image entry without id or file_name")
                continue
            by_key.setdefault(CocoItem(coco, image, "").key, (coco, image))
    official = {key: coco.split for key, (coco, _) in by_key.items()}
    assigned, how = complete_splits(official, lambda key: 0, opts.shares, opts.seed)
    items = sorted((CocoItem(*by_key[key], split) for key, split in assigned.items()),
                   key=lambda it: (SPLITS.index(it.split), it.key))
    return subsample(items, opts.max_images, name=lambda it: it.key,
                     group=lambda it: it.split, seed=opts.seed), how


def _check_same_categories(files: list[CocoFile]) -> None:
    first = {c["id"]: c["name"] for c in files[0].categories}
    for coco in files[1:]:
        if {c["id"]: c["name"] for c in coco.categories} != first:
            raise UserError(f"{coco.path.name} and {files[0].path.name} have different "
                            "category lists; they cannot share one set of mask classes")


def mask_scheme(categories: list[dict[str, Any]], grouping: str,
                drawn: Callable[[dict[str, Any]], bool] = lambda c: True,
                binary_name: str = "object") -> MaskScheme:
    """Mask classes for the categories `drawn` selects, grouped as data.mask_grouping says."""
    def group(category: dict[str, Any]) -> str:
        if grouping == "binary":
            return binary_name
        if grouping == "supercategory":
            return str(category.get("supercategory") or category["name"])
        return str(category["name"])

    cats = sorted((c for c in categories if drawn(c)), key=lambda c: c["id"])
    group_of = {c["id"]: group(c) for c in cats}
    names = list(dict.fromkeys(group_of.values()))  # in category id order
    if len(names) >= IGNORE:
        raise UserError(f"{len(names)} mask classes do not fit the uint8 masks (at most "
                        f"{IGNORE - 1}); set data.mask_grouping to supercategory or binary")
    index = {name: i + 1 for i, name in enumerate(names)}
    return MaskScheme(["background", *names], {cid: index[g] for cid, g in group_of.items()})


class ImageFinder:
    """Finds the file a COCO `file_name` names under some roots: as a path, else by name."""

    def __init__(self, roots: list[tuple[Path, bool]]) -> None:
        self.roots = roots                 # (folder, owned: files may be moved out of it)
        self._by_name: dict[str, list[tuple[Path, bool]]] | None = None

    def for_item(self, item: CocoItem) -> tuple[Path, bool]:
        return self.find(item.image["file_name"], item.file.split)

    def find(self, file_name: str, split: str = "") -> tuple[Path, bool]:
        """(path, owned); LookupError with the quarantine reason if there is not exactly one."""
        name = PurePosixPath(file_name.replace("\\", "/"))
        if not name.is_absolute() and ".." not in name.parts:
            for root, owned in self.roots:
                if (root / name).is_file():
                    return root / name, owned
        same_name = self._index().get(name.name, [])
        tail = "/" + name.as_posix().lstrip("/")
        hits = [(p, o) for p, o in same_name if ("/" + p.as_posix()).endswith(tail)] or same_name
        if len(hits) > 1 and split:
            hits = [(p, o) for p, o in hits if any(split_word(part) == split for part in p.parts)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise LookupError(f"missing: listed as {file_name!r} but not found")
        raise LookupError(f"ambiguous: {len(hits)} files match {file_name!r}")

    def _index(self) -> dict[str, list[tuple[Path, bool]]]:
        if self._by_name is None:
            self._by_name = defaultdict(list)
            for root, owned in self.roots:
                for folder, dirs, names in os.walk(root):
                    dirs[:] = [d for d in dirs if not is_junk(d)]
                    for n in names:
                        self._by_name[n].append((Path(folder, n), owned))
        return self._by_name


def build_coco(writer: RawWriter, items: list[CocoItem],
               find: Callable[[CocoItem], tuple[Path, bool]], scheme: MaskScheme,
               extra: dict[str, Any]) -> SourceResult:
    """Store the items' images with semantic masks, and write instances.json."""
    candidates: list[Candidate] = []
    kept: list[CocoItem] = []
    for item in items:
        rel = _rel(item)
        try:
            path, owned = find(item)
        except LookupError as err:
            writer.quarantine(rel, str(err))
            continue
        candidates.append(Candidate(path, rel, item.split, "", owned))
        kept.append(item)
    instances: dict[int, tuple[tuple[int, int], list[dict[str, Any]]]] = {}
    dropped = 0

    def annotate(i: int, cand: Candidate, checked: CheckedImage) -> np.ndarray:
        nonlocal dropped
        semantic, anns, n_dropped = render(kept[i], checked, scheme)
        instances[i] = (checked.size, anns)
        dropped += n_dropped
        return semantic

    rows = ingest(writer, candidates, annotate, desc=str(extra.get("source", "coco")))
    writer.write_instances(_instances_json(kept, rows, instances, scheme, extra))
    return SourceResult(labels=[], mask_classes=scheme.names,
                        extra={**extra, "annotations_dropped": dropped})


def _rel(item: CocoItem) -> str:
    """Where an image goes under images/: <split of its JSON>/<file_name without ..>."""
    parts = [p for p in PurePosixPath(item.image["file_name"].replace("\\", "/")).parts
             if p not in ("/", "..", ".")]
    folder = item.file.split or item.file.path.stem
    return "/".join([folder, *parts])


def render(item: CocoItem, checked: CheckedImage, scheme: MaskScheme,
           ) -> tuple[np.ndarray, list[dict[str, Any]], int]:
    """The semantic mask and the instance annotations of one image, in its upright frame.

    Annotations are in the frame of the JSON's width/height: the stored pixels (turned upright
    here along with the image) or, if those match only the upright size, already upright.
    Returns (mask, annotations, number of annotations dropped for having no valid polygon).
    """
    w, h = item.image.get("width"), item.image.get("height")
    if (w, h) == checked.raw_size:
        turn = checked.orientation
    elif (w, h) == checked.size:
        turn = 1
    else:
        raise RefusedImage(f"annotation size {w}x{h} does not match the image "
                           f"({checked.raw_size[0]}x{checked.raw_size[1]})")
    assert w is not None and h is not None  # equal to one of the image's sizes
    painted: list[tuple[int, dict[str, Any], int]] = []
    anns: list[dict[str, Any]] = []
    dropped = 0
    for ann in item.file.annotations.get(item.image["id"], []):
        rle = _to_rle(ann.get("segmentation"), h, w, ann.get("id"))
        if rle is None:
            dropped += 1
            continue
        out = dict(ann)
        if turn != 1:  # the given polygons/RLE no longer fit the upright pixels
            upright = orient_array(mask_utils.decode(rle), turn)
            rle = mask_utils.encode(np.asfortranarray(upright))
            out.update(segmentation={"size": rle["size"], "counts": rle["counts"].decode()},
                       bbox=mask_utils.toBbox(rle).tolist(), area=int(mask_utils.area(rle)))
        elif isinstance(ann.get("segmentation"), list):
            out["segmentation"] = [p for p in ann["segmentation"] if _valid_polygon(p)]
        if "bbox" not in out:
            out["bbox"] = mask_utils.toBbox(rle).tolist()
        anns.append(out)
        cls = scheme.class_of.get(ann.get("category_id"))
        if cls:
            painted.append((int(mask_utils.area(rle)), rle, IGNORE if ann.get("iscrowd") else cls))
    width, height = checked.size
    semantic = np.zeros((height, width), dtype=np.uint8)
    for _, rle, value in sorted(painted, key=lambda p: -p[0]):  # stable: ties in file order
        semantic[mask_utils.decode(rle).view(bool)] = value
    return semantic, anns, dropped


def _valid_polygon(poly: Any) -> bool:
    # pycocotools reads a 4-number list as a box, so a polygon needs 3+ points
    return (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            and all(is_number(v) for v in poly))


def _to_rle(segm: Any, h: int, w: int, ann_id: Any) -> dict[str, Any] | None:
    """One RLE for a polygon list, uncompressed or compressed RLE; None if no valid polygon."""
    if isinstance(segm, list):
        polys = [p for p in segm if _valid_polygon(p)]
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w)) if polys else None
    if isinstance(segm, dict) and list(segm.get("size", [])) == [h, w]:
        counts = segm.get("counts")
        if isinstance(counts, list) and sum(counts) == h * w:
            return mask_utils.frPyObjects(segm, h, w)
        if isinstance(counts, (str, bytes)):
            return {"size": [h, w], "counts": counts}
    raise RefusedImage(f"malformed segmentation in annotation {ann_id}")


def _instances_json(items: list[CocoItem], rows: dict[int, Any],
                    instances: dict[int, tuple[tuple[int, int], list[dict[str, Any]]]],
                    scheme: MaskScheme, extra: dict[str, Any]) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in sorted(rows):
        (width, height), anns = instances[i]
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rows[i].path, "width": width,
                       "height": height, "source_file": items[i].file.path.name,
                       "source_id": items[i].image["id"]})
        for ann in anns:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_id})
    first = items[0].file if items else None
    categories = [{**c, "mask_class": scheme.class_of.get(c["id"], 0)}
                  for c in (first.categories if first else [])]
    return {**(first.extra if first else {}),
            "info": {"description": f"{extra.get('source', 'coco')} instances for data/raw"},
            "images": images, "annotations": annotations, "categories": categories}
