"""Source `fashionpedia` (Jia et al., ECCV 2020): 46 apparel categories, COCO format.

Files (public CVDF bucket, or any copy under data.path, as a folder or one archive):
    annotations/instances_attributes_train2020.json, instances_attributes_val2020.json
    images/train2020.zip (train/<id>.jpg), val_test2020.zip (test/<id>.jpg, val and test)
Only the annotated sets are used: train, and val as the test set (the paper reports on val);
a val split is drawn from train (data.split, data.seed). A copy with only one of the two parts
works too: its photos are split afresh, stratified and deterministic (data.split, data.seed).
With data.max_images, only the photos chosen are unpacked from the zips.

Semantic masks draw the 27 main apparel categories (ids 0-26, grouped by data.mask_grouping:
`category` = the 27 garments, `supercategory` = upperbody, lowerbody, wholebody, head, neck,
arms and hands, waist, legs and feet, others, `binary` = apparel). The 19 garment parts
(sleeve, neckline, pocket, zipper, ...) lie on the garments and would only cut holes in them;
they stay in instances.json, with every category and attribute_ids. Overlaps: see coco.py.
Fashionpedia has no image-level class (a photo shows several garments), so no classification.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fashionbg.contracts.raw import RawWriter, SourceResult
from fashionbg.core.errors import UserError
from fashionbg.ingest.extract import extract
from fashionbg.ingest.intake import is_junk
from fashionbg.ingest.origin import Origin, materialize, parse_origin, staging_dir
from fashionbg.ingest.splits import Sampling, sampling
from fashionbg.sources.coco import ImageFinder, build_coco, grouping, load_coco, mask_scheme, plan

log = logging.getLogger(__name__)
HOMEPAGE = "https://fashionpedia.github.io/home/"
BASE_URL = "https://s3.amazonaws.com/ifashionist-dataset"
# (annotation file, image zip, official split)
SETS = (("instances_attributes_train2020.json", "train2020.zip", "train"),
        ("instances_attributes_val2020.json", "val_test2020.zip", "val"))
REMOTE_FILES = ("annotations/" + SETS[0][0], "annotations/" + SETS[1][0],
                "images/" + SETS[0][1], "images/" + SETS[1][1])
PART_SUPERCATEGORIES = frozenset({"garment parts", "closures", "decorations"})


@dataclass(frozen=True)
class FashionpediaConfig:
    origin: Origin
    sampling: Sampling
    grouping: str


def validate(data: dict[str, Any]) -> FashionpediaConfig:
    defaults = {name: f"{BASE_URL}/{name}" for name in REMOTE_FILES}
    return FashionpediaConfig(parse_origin(data, "fashionpedia", HOMEPAGE, defaults),
                              sampling(data), grouping(data))


def is_main(category: dict[str, Any]) -> bool:
    """One of the 27 main apparel categories (not a garment part, closure or decoration)."""
    return category.get("supercategory") not in PART_SUPERCATEGORIES


def build(config: FashionpediaConfig, writer: RawWriter) -> SourceResult:
    with materialize(config.origin) as tree:
        found = _files_by_name(tree.root)
        sets = [s for s in SETS if s[0] in found]
        if not sets:
            raise UserError(f"Fashionpedia annotations not found under {tree.root}: "
                            f"{' or '.join(a for a, _, _ in SETS)} (get them from "
                            f"{BASE_URL}/annotations/)")
        if len(sets) < len(SETS):
            log.info("only the official %s part is under %s", sets[0][2], tree.root)
        files = [load_coco(found[ann], split) for ann, _, split in sets]
        items, how = plan(files, config.sampling, writer)
        with staging_dir("fashionpedia-images") as stage:
            finders = {}
            for coco, (_, zip_name, _) in zip(files, sets, strict=True):
                wanted = {PurePosixPath(it.image["file_name"]).name
                          for it in items if it.file is coco}
                if zip_name in found:
                    extract(found[zip_name], stage / zip_name,
                            select=_named(wanted))
                    finders[coco.path] = ImageFinder([(stage / zip_name, True)])
                else:  # images already unpacked somewhere under data.path
                    finders[coco.path] = ImageFinder([(tree.root, tree.owned)])
            scheme = mask_scheme(files[0].categories, config.grouping, drawn=is_main,
                                 binary_name="apparel")
            return build_coco(writer, items, lambda it: finders[it.file.path].for_item(it),
                              scheme, {
                "source": "fashionpedia",
                "tasks": ["semantic_segmentation", "instance_segmentation"],
                "classification": "none: Fashionpedia has no image-level label (a photo "
                                  "shows several garments)",
                "mask_grouping": config.grouping, "splits_from": how,
                "provenance": tree.provenance})


def _named(names: set[str]) -> Callable[[str], bool]:
    """Selects the archive members whose file name is in `names`."""
    return lambda member: PurePosixPath(member).name in names


def _files_by_name(root: Path) -> dict[str, Path]:
    """The Fashionpedia files found below root, by file name (first found wins)."""
    names = {n for s in SETS for n in s[:2]}
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_junk(d))
        for name in sorted(set(files) & names):
            found.setdefault(name, Path(folder, name))
    return found
