"""Taking candidate photos into data/raw/: hygiene check, then keep, convert or quarantine.

A photo that is already an upright 8-bit RGB JPEG/PNG is copied byte-for-byte (moved when it
comes from a staging folder of ours, never from the user's own folder). Anything else that
decodes is stored as the RGB image `open_rgb` returns: re-encoded as JPEG (quality 95) if it
was a JPEG, else as PNG (".png" is appended to names of other formats, e.g. "a.webp.png").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fashionbg.contracts.raw import IndexRow, RawWriter
from fashionbg.ingest.hygiene import CheckedImage, RefusedImage, check_image, open_rgb

JPEG_QUALITY = 95
# Files nobody asked for (OS and archiver droppings), skipped without a quarantine entry.
JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})


@dataclass(frozen=True)
class Candidate:
    path: Path          # the file on disk
    rel: str            # where it goes under images/ (posix); also its name in quarantine.csv
    split: str
    label: str = ""
    owned: bool = False  # from a staging folder of ours: may be moved instead of copied


# Called once the image passed hygiene; returns its mask or raises RefusedImage.
Annotate = Callable[[int, Candidate, CheckedImage], "np.ndarray | None"]


def is_junk(name: str) -> bool:
    return name.startswith(".") or name in JUNK_NAMES


def undecodable(name: str) -> bool:
    """A name the file system gave as bytes that are not UTF-8 (Python keeps them as lone
    surrogates): it cannot go into index.csv, so the photo is quarantined under `shown_name`."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown_name(name: str) -> str:
    """`name` with undecodable bytes written as escapes (\\xff), safe for CSV and logs."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def stored_rel(rel: str, checked: CheckedImage) -> str:
    """The name the photo gets under images/ (a converted photo's suffix must match its bytes)."""
    if checked.clean:
        return rel
    jpeg = checked.format in ("JPEG", "MPO")
    wanted = (".jpg", ".jpeg") if jpeg else (".png",)
    return rel if Path(rel).suffix.lower() in wanted else rel + (".jpg" if jpeg else ".png")


def ingest(writer: RawWriter, candidates: Sequence[Candidate], annotate: Annotate | None = None,
           desc: str = "images") -> dict[int, IndexRow]:
    """Check and store every candidate; refusals go to the writer's quarantine.

    Returns the index row of every stored candidate, by its position in `candidates`.
    """
    rows: dict[int, IndexRow] = {}
    for i, cand in enumerate(tqdm(candidates, desc=desc, unit="img", disable=None)):
        try:
            checked = check_image(cand.path)
            mask = annotate(i, cand, checked) if annotate else None
            rows[i] = _store(writer, cand, checked, mask)
        except RefusedImage as err:
            writer.quarantine(cand.rel, str(err))
    return rows


def _store(writer: RawWriter, cand: Candidate, checked: CheckedImage,
           mask: np.ndarray | None) -> IndexRow:
    if checked.clean:
        return writer.add_file(cand.rel, cand.path, cand.split, cand.label, mask,
                               move=cand.owned)
    return writer.add_image(stored_rel(cand.rel, checked), open_rgb(cand.path), cand.split,
                            cand.label, mask, quality=JPEG_QUALITY)
