"""Source `fashionstyle14`: 13,126 photos of 14 styles (Takagi et al., ICCV 2017 workshops).

Unpacked layout: `FashionStyle14_v1/dataset/<style>/<file>` (some files are PNG) and the
official split lists `train.csv`, `val.csv` (`valid.csv` in some copies) and `test.csv` beside
`dataset/`: no header, one path per line, `dataset/<style>/<file>`. The label is the style
folder; the official splits are used as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbg.contracts.raw import RawWriter, SourceResult
from fashionbg.core.errors import UserError
from fashionbg.ingest.origin import Origin, materialize, parse_origin
from fashionbg.ingest.splits import Sampling, sampling
from fashionbg.sources.folder import build_classified, find_split_lists

STYLES = ["conservative", "dressy", "ethnic", "fairy", "feminine", "gal", "girlish",
          "kireime-casual", "lolita", "mode", "natural", "retro", "rock", "street"]
HOMEPAGE = "https://esslab.jp/~ess/en/data/fashionstyle14/"
# The authors' download link (not reachable from here to verify; override with data.url).
URL = "https://esslab.jp/~ess/data/FashionStyle14_v1.tar.gz"


@dataclass(frozen=True)
class FashionStyle14Config:
    origin: Origin
    sampling: Sampling


def validate(data: dict[str, Any]) -> FashionStyle14Config:
    return FashionStyle14Config(
        parse_origin(data, "fashionstyle14", HOMEPAGE, {"FashionStyle14_v1.tar.gz": URL}),
        sampling(data))


def build(config: FashionStyle14Config, writer: RawWriter) -> SourceResult:
    with materialize(config.origin) as tree:
        top = find_top(tree.root)
        lists = find_split_lists(top)
        missing = [s for s in ("train", "val", "test") if s not in lists]
        if missing:
            raise UserError(f"FashionStyle14 split lists missing in {top}: {', '.join(missing)} "
                            "(expected train.csv, val.csv or valid.csv, test.csv). To use the "
                            "photos without the official splits, set data.source: folder and "
                            f"data.path: {top / 'dataset'}")
        return build_classified(writer, tree, top / "dataset", lists, config.sampling,
                                source="fashionstyle14", labels=STYLES)


def find_top(root: Path, depth: int = 3) -> Path:
    """The folder holding `dataset/` (FashionStyle14_v1/), at most `depth` levels down."""
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if (folder / "dataset").is_dir():
                return folder
        level = sorted(p for folder in level for p in folder.iterdir()
                       if p.is_dir() and not p.is_symlink())
    raise UserError(f"no FashionStyle14 layout under {root}: expected "
                    "FashionStyle14_v1/dataset/<style>/<file> with train.csv, val.csv, test.csv")
