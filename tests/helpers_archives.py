"""Miniature copies of the paper's datasets in their real layouts, for the smoke run of the
`paper` preset: FashionStyle14's zip with its split CSVs (all 14 styles) and Fashionpedia's
annotation files beside train2020.zip / val_test2020.zip."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from test_download import H, W, fashionpedia_json

from fashionbg.sources.fashionstyle14 import STYLES


def figure_photo(seed: int, w: int = W, h: int = H) -> bytes:
    """A textured background with a brighter upright figure in the middle, as a JPEG."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    pixels[h // 10:h - h // 10, w // 3:w - w // 3] = rng.integers(150, 256, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def fashionstyle14_zip(path: Path, per_split: tuple[int, int, int] = (4, 1, 2)) -> Path:
    """FashionStyle14_v1.zip: every style with per_split (train, val, test) photos and the
    official lists train.csv, val.csv, test.csv beside dataset/."""
    files: dict[str, bytes] = {}
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for s, style in enumerate(STYLES):
        splits = [name for name, n in zip(lists, per_split) for _ in range(n)]
        for i, split in enumerate(splits):
            member = f"dataset/{style}/{style}_{i}.jpg"
            files[f"FashionStyle14_v1/{member}"] = figure_photo(100 * s + i)
            lists[split].append(member)
    for split, members in lists.items():
        files[f"FashionStyle14_v1/{split}.csv"] = "".join(f"{m}\n" for m in members).encode()
    return write_zip(path, files)


def fashionpedia_folder(root: Path, train: int = 12, val: int = 6) -> Path:
    """annotations/instances_attributes_{train,val}2020.json and images/train2020.zip,
    images/val_test2020.zip (val photos under test/, as the real zip has them)."""
    names = {"train": [f"t{i}.jpg" for i in range(train)], "val": [f"v{i}.jpg" for i in range(val)]}
    for split, first_id in (("train", 1), ("val", 500)):
        target = root / "annotations" / f"instances_attributes_{split}2020.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(fashionpedia_json(names[split], first_id)))
    write_zip(root / "images/train2020.zip",
              {f"train/{n}": figure_photo(i) for i, n in enumerate(names["train"])})
    write_zip(root / "images/val_test2020.zip",
              {f"test/{n}": figure_photo(50 + i) for i, n in enumerate(names["val"])})
    return root
