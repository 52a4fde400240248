"""Source `folder`: any `root/<class>/...` tree of photos, as a folder or an archive of one.

Labels are the class folder names (files deeper down belong to their top-level folder). Split
lists are optional: `train`, `val` (or `valid`, `validation`) and `test`, suffix .csv or .txt,
beside the class folders; one path per line (first CSV column, relative to the list's folder or
to the tree root). Without lists, splits are drawn stratified by class from data.split and
data.seed; with some lists only, see splits.complete_splits. A wrapper folder (an archive
`photos.zip` holding `photos/<class>/...`) is looked through.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbg.contracts.codes import SPLITS
from fashionbg.contracts.raw import RawWriter, SourceResult
from fashionbg.core.errors import UserError
from fashionbg.ingest.intake import Candidate, ingest, is_junk, shown_name, undecodable
from fashionbg.ingest.origin import Origin, Tree, materialize, parse_origin
from fashionbg.ingest.splits import Sampling, complete_splits, sampling, subsample

log = logging.getLogger(__name__)
SPLIT_LIST_STEMS = {"train": ("train",), "val": ("val", "valid", "validation"),
                    "test": ("test",)}
LIST_SUFFIXES = (".csv", ".txt")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif",
                            ".tiff", ".mpo"})


@dataclass(frozen=True)
class FolderConfig:
    origin: Origin
    sampling: Sampling


def validate(data: dict[str, Any]) -> FolderConfig:
    return FolderConfig(parse_origin(data, "folder", homepage="your own photos"), sampling(data))


def build(config: FolderConfig, writer: RawWriter) -> SourceResult:
    with materialize(config.origin) as tree:
        root = class_root(tree.root)
        return build_classified(writer, tree, root, find_split_lists(root), config.sampling,
                                source="folder")


def class_root(root: Path) -> Path:
    """Look through wrapper folders: a lone folder that itself holds folders."""
    while True:
        entries = _entries(root)
        if (len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False)
                or not any(e.is_dir() for e in _entries(Path(entries[0].path)))):
            return root
        root = Path(entries[0].path)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not is_junk(e.name)), key=lambda e: e.name)


def find_split_lists(directory: Path) -> dict[str, Path]:
    """split → list file found in `directory` (the first of the accepted names)."""
    found = {}
    for split, stems in SPLIT_LIST_STEMS.items():
        for name in (stem + suffix for stem in stems for suffix in LIST_SUFFIXES):
            if (directory / name).is_file():
                found[split] = directory / name
                break
    return found


def scan_classes(root: Path) -> dict[str, str]:
    """rel path (posix, under root) → class, for every file below a class folder."""
    files: dict[str, str] = {}
    loose = 0
    for entry in _entries(root):
        if not entry.is_dir(follow_symlinks=False):
            loose += 1
            continue
        for folder, dirs, names in os.walk(entry.path):  # does not follow directory links
            dirs[:] = [d for d in dirs if not is_junk(d)]
            for name in names:
                if not is_junk(name):
                    rel = Path(folder, name).relative_to(root).as_posix()
                    files[rel] = entry.name
    if loose:
        log.info("%d files beside the class folders in %s are not photos of a class; skipped",
                 loose, root)
    return files


def read_split_lists(writer: RawWriter, lists: dict[str, Path], root: Path,
                     files: dict[str, str]) -> dict[str, str]:
    """rel → split for listed files; entries naming no file are quarantined."""
    official: dict[str, str] = {}
    conflicts = 0
    for split, path in lists.items():
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            for n, fields in enumerate(csv.reader(f)):
                entry = fields[0].strip().replace("\\", "/") if fields else ""
                if not entry or (n == 0 and Path(entry).suffix.lower() not in IMAGE_SUFFIXES):
                    continue  # blank line or header
                tries = (_under(root, path.parent / entry), _under(root, root / entry))
                rel = next((r for r in tries if r in files), None)
                if rel is None:
                    writer.quarantine(entry, f"missing: listed in {path.name} but not found")
                elif rel in official:
                    conflicts += 1
                else:
                    official[rel] = split
    if conflicts:
        log.warning("%d files are listed in more than one split list; the first list wins",
                    conflicts)
    return official


def _under(root: Path, path: Path) -> str:
    """`path` (normalised, not resolved) relative to root, posix; "../..." if outside."""
    return Path(os.path.relpath(os.path.normpath(path), root)).as_posix()


def build_classified(writer: RawWriter, tree: Tree, root: Path, lists: dict[str, Path],
                     opts: Sampling, source: str, labels: list[str] | None = None,
                     ) -> SourceResult:
    """Index a class-folder tree; shared by `folder` and `fashionstyle14`."""
    files = scan_classes(root)
    for rel in [rel for rel in files if undecodable(rel)]:
        del files[rel]
        writer.quarantine(shown_name(rel), "file name is not valid UTF-8; rename it to keep it")
    labels = labels or sorted(set(files.values()))
    if len(labels) < 2:
        raise UserError(f"{root} has {len(labels)} class folder(s); the {source} source needs "
                        "root/<class>/<photo> with at least two classes")
    if lists:
        official = read_split_lists(writer, lists, root, files)
        log.info("splits from %s", ", ".join(p.name for p in lists.values()))
    else:
        official = {rel: "" for rel in files}
    known = {rel: split for rel, split in official.items() if files[rel] in labels}
    for rel in sorted(set(official) - set(known)):
        writer.quarantine(rel, f"unknown class: {files[rel]!r} is not one of the {source} "
                               "classes")
    assigned, how = complete_splits(known, files.__getitem__, opts.shares, opts.seed)
    items = sorted(assigned.items(), key=lambda item: (SPLITS.index(item[1]), item[0]))
    items = subsample(items, opts.max_images, name=lambda it: it[0],
                      group=lambda it: (it[1], files[it[0]]), seed=opts.seed)
    ingest(writer, [Candidate(root / rel, rel, split, files[rel], tree.owned)
                    for rel, split in items], desc=source)
    return SourceResult(labels=labels, mask_classes=[], extra={
        "source": source, "tasks": ["classification"], "splits_from": how,
        "unlisted": len(files) - len(official), "provenance": tree.provenance,
    })
