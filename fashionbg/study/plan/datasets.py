"""What the pre-flight learns about a dataset before the download stage touches it: that it is
there and readable in its source's layout, how many photos it holds, how much disk it takes,
and (for segmentation) the class names its masks will have."""
from __future__ import annotations

import json
import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fashionbg.core.errors import UserError
from fashionbg.core.io import read_regular
from fashionbg.ingest.extract import archive_kind
from fashionbg.sources import fashionpedia
from fashionbg.sources.coco import mask_scheme
from fashionbg.sources.demo.source import MASK_CLASSES, STYLES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_BYTES = 40_000        # one rembg alpha mask (PNG at the photo's size), typical
PUBLISHED = {"fashionstyle14": 13_126, "fashionpedia": 45_623 + 1_158}   # train + val photos
MAX_ANNOTATION_BYTES = 4 << 30      # Fashionpedia's larger annotation file is about 0.5 GB
SAMPLE_BYTES = 1 << 20              # read of a zip's first and last file, to find damage
# What a damaged or truncated archive raises while listed or read (zlib.error, EOFError:
# a broken stream; RuntimeError: encrypted; NotImplementedError: unknown compression).
ARCHIVE_ERRORS = (OSError, EOFError, RuntimeError, NotImplementedError, zlib.error,
                  zipfile.BadZipFile, tarfile.TarError)


@dataclass(frozen=True)
class Probe:
    where: str
    images: int | None            # photos found (None: known only after the download)
    raw_bytes: int | None         # what data/raw will take (None: unknown)
    classes: list[str] | None     # mask class names (None: not known before the download)

    def images_used(self, max_images: int | None) -> int | None:
        if self.images is None or max_images is None:
            return self.images
        return min(self.images, max_images)

    def describe(self) -> str:
        count = "size unknown" if self.images is None else f"{self.images} photos"
        return f"{self.where}: {count}"


def probe(source: str, data: dict[str, Any]) -> Probe:
    if source == "demo":
        n = data["demo"]["images_per_class"] * len(STYLES)
        h, w = data["demo"]["image_size"]
        return Probe("generated demo", n, n * h * w // 4, list(MASK_CLASSES[1:]))
    if data.get("path") is None:
        url = data.get("url") or "its default URL"
        return Probe(f"downloaded from {url}", PUBLISHED.get(source), None, None)
    path = Path(data["path"]).expanduser()
    if not os.access(path, os.R_OK):
        raise UserError(f"{path} is not readable; check its permissions")
    names, size = _listing(path)
    check = LAYOUTS.get(source)
    images = check(path, names) if check else _count_images(names)
    classes = _fashionpedia_classes(path, names, data) if source == "fashionpedia" else None
    return Probe(str(path), images, size, classes)


def _listing(path: Path) -> tuple[list[str], int]:
    """Every file under a folder or in an archive (posix names), and the bytes on disk."""
    if path.is_dir():
        names, size = [], 0
        for folder, _, files in os.walk(path):
            for name in files:
                full = Path(folder, name)
                names.append(full.relative_to(path).as_posix())
                size += full.stat().st_size
        return names, size
    kind = archive_kind(path)
    if kind not in ("zip", "tar"):
        raise UserError(f"{path} is neither a folder nor a zip or tar archive")
    try:
        if kind == "zip":
            names = _zip_names(path)
        else:           # reading every header reads (and decompresses) the whole archive
            with tarfile.open(path) as tf:
                names = [m.name for m in tf if m.isfile()]
    except ARCHIVE_ERRORS as err:
        raise UserError(f"cannot read the archive {path}: {err or type(err).__name__}; it is "
                        "damaged or incomplete: download it again") from None
    return names, path.stat().st_size


def _zip_names(path: Path) -> list[str]:
    """The files of a zip, whose first and last are read in part: the listing alone is its
    central directory, which a damaged archive can still have whole."""
    with zipfile.ZipFile(path) as zf:
        files = [i for i in zf.infolist() if not i.is_dir()]
        for info in files[:1] + files[-1:]:
            with zf.open(info) as member:
                member.read(SAMPLE_BYTES)
        return [i.filename for i in files]


def _count_images(names: list[str]) -> int:
    return sum(n.lower().endswith(IMAGE_SUFFIXES) for n in names)


def _fashionstyle14(path: Path, names: list[str]) -> int:
    parts = [PurePosixPath(n).parts for n in names]
    photos = [p for p in parts if "dataset" in p[:-2] and p[-1].lower().endswith(IMAGE_SUFFIXES)]
    lists = {p[-1] for p in parts if p[-1] in ("train.csv", "val.csv", "valid.csv", "test.csv")}
    if not photos or not {"train.csv", "test.csv"} <= lists or not lists & {"val.csv",
                                                                              "valid.csv"}:
        raise UserError(f"no FashionStyle14 layout in {path}: expected FashionStyle14_v1/"
                        "dataset/<style>/<file> with train.csv, val.csv, test.csv beside dataset/")
    return len(photos)


def _fashionpedia(path: Path, names: list[str]) -> int | None:
    """Photos in the image zips (or loose); None where the zips sit inside another archive."""
    by_name = {PurePosixPath(n).name: n for n in names}
    annotations = [a for a, _, _ in fashionpedia.SETS if a in by_name]
    if not annotations:
        raise UserError(f"no Fashionpedia annotations in {path}: expected "
                        + " or ".join(a for a, _, _ in fashionpedia.SETS))
    zips = [by_name[z] for _, z, _ in fashionpedia.SETS if z in by_name]
    if not zips:
        return _count_images(names)
    if not path.is_dir():
        return None
    total = 0
    for name in zips:
        try:
            total += _count_images(_zip_names(path / name))
        except ARCHIVE_ERRORS as err:
            raise UserError(f"cannot read {path / name}: {err or type(err).__name__}; it is "
                            "damaged or incomplete: download it again") from None
    return total


def _fashionpedia_classes(path: Path, names: list[str], data: dict[str, Any]
                          ) -> list[str] | None:
    """The mask classes under data.mask_grouping, from the smaller annotation file's
    categories; None where the annotations sit inside an archive."""
    if not path.is_dir():
        return None
    files = [path / n for n in names if PurePosixPath(n).name in
             {a for a, _, _ in fashionpedia.SETS}]
    smallest = min(files, key=lambda f: f.stat().st_size)
    try:
        text = read_regular(smallest, MAX_ANNOTATION_BYTES)
        if len(text) > MAX_ANNOTATION_BYTES:
            raise ValueError(f"larger than {MAX_ANNOTATION_BYTES >> 30} GiB")
        categories = json.loads(text)["categories"]
        if not (isinstance(categories, list) and all(isinstance(c, dict) for c in categories)):
            raise ValueError("categories is not a list of objects")
        scheme = mask_scheme(categories, data["mask_grouping"], drawn=fashionpedia.is_main,
                             binary_name="apparel")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read the categories of {smallest}: {err}") from None
    except RecursionError:
        raise UserError(f"cannot read the categories of {smallest}: nested too deeply to be "
                        "Fashionpedia's annotations") from None
    return scheme.names[1:]


LAYOUTS = {"fashionstyle14": _fashionstyle14, "fashionpedia": _fashionpedia}
