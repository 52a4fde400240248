"""The download stage against a local HTTP server: FashionStyle14 and Fashionpedia layouts,
resume after a dropped connection, checksum mismatch, 404, offline, hostile archives."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers_http import FileServer
from helpers_params import params_with
from PIL import Image

from fashionbg.sources.fashionstyle14 import STYLES

FS14_STYLES = ("conservative", "gal", "rock")


# ---------------------------------------------------------------- running the stage


def run_stage(project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
              **data: Any) -> tuple[int, str]:
    """Run stages/download.py in `project` with these data.* params; (exit code, stderr)."""
    from stages.download import main

    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params_with(data=data)))
    monkeypatch.chdir(project)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*")) if not p.is_symlink() and not p.is_fifo()}


def written_outside(before: dict[str, bytes], after: dict[str, bytes],
                    allowed: tuple[str, ...]) -> list[str]:
    """Paths created or changed that are not under one of the `allowed` prefixes."""
    return [p for p, data in after.items() if before.get(p) != data
            and not any(p == a or p.startswith(a + "/") for a in allowed)]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


# ---------------------------------------------------------------- building datasets


def photo(w: int, h: int, seed: int, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def fs14_files(val_name: str = "val.csv") -> dict[str, bytes]:
    """FashionStyle14_v1/ with 3 styles x 4 photos (one PNG each) and the split lists."""
    files: dict[str, bytes] = {}
    lists: dict[str, list[str]] = {"train.csv": [], val_name: [], "test.csv": []}
    for s, style in enumerate(FS14_STYLES):
        for i in range(4):
            name = f"dataset/{style}/{style}_{i}.{'png' if i == 2 else 'jpg'}"
            files[f"FashionStyle14_v1/{name}"] = photo(24, 32, 10 * s + i,
                                                       "PNG" if i == 2 else "JPEG")
            lists[["train.csv", "train.csv", val_name, "test.csv"][i]].append(name)
    for name, lines in lists.items():
        files[f"FashionStyle14_v1/{name}"] = "".join(f"{line}\n" for line in lines).encode()
    return files


def tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rle_rect(h: int, w: int, x0: int, y0: int, x1: int, y1: int, compressed: bool) -> dict:
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    if compressed:
        enc = mask_utils.encode(np.asfortranarray(m))
        return {"size": [h, w], "counts": enc["counts"].decode()}
    flat = m.flatten(order="F")  # uncompressed COCO RLE: column-major run lengths from 0s
    runs, value, count = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    return {"size": [h, w], "counts": [*runs, count]}


FP_CATEGORIES = [
    {"id": 0, "name": "shirt, blouse", "supercategory": "upperbody", "level": 2},
    {"id": 6, "name": "pants", "supercategory": "lowerbody", "level": 2},
    {"id": 10, "name": "dress", "supercategory": "wholebody", "level": 2},
    {"id": 19, "name": "belt", "supercategory": "waist", "level": 2},
    {"id": 23, "name": "shoe", "supercategory": "legs and feet", "level": 2},
    {"id": 31, "name": "sleeve", "supercategory": "garment parts", "level": 2},
]
W, H = 64, 48


def fashionpedia_json(names: list[str], first_id: int) -> dict:
    """Every image: a dress (polygon), a belt on it (compressed RLE), a sleeve (part, polygon);
    the first one also pants (uncompressed RLE)."""
    images, anns = [], []
    for n, name in enumerate(names):
        image_id = first_id + n
        images.append({"id": image_id, "file_name": name, "width": W, "height": H})
        mine = [
            {"category_id": 10, "segmentation": [rect(8, 4, 56, 44)], "bbox": [8, 4, 48, 40],
             "area": 1920, "iscrowd": 0, "attribute_ids": [115, 136]},
            {"category_id": 19, "segmentation": rle_rect(H, W, 10, 20, 54, 24, True),
             "bbox": [10, 20, 44, 4], "area": 176, "iscrowd": 0, "attribute_ids": []},
            {"category_id": 31, "segmentation": [rect(8, 4, 20, 16)], "bbox": [8, 4, 12, 12],
             "area": 144, "iscrowd": 0, "attribute_ids": []},
        ]
        if n == 0:
            mine.append({"category_id": 6, "segmentation": rle_rect(H, W, 0, 44, 64, 48, False),
                         "bbox": [0, 44, 64, 4], "area": 256, "iscrowd": 0,
                         "attribute_ids": []})
        anns += [{**ann, "id": 1000 * image_id + k, "image_id": image_id}
                 for k, ann in enumerate(mine)]
    return {"info": {"year": 2020}, "licenses": [], "categories": FP_CATEGORIES,
            "attributes": [{"id": 115, "name": "symmetrical"}, {"id": 136, "name": "maxi"}],
            "images": images, "annotations": anns}


def fashionpedia_files() -> dict[str, bytes]:
    """The four public files: 6 train and 3 val images (+ 2 unannotated test images)."""
    train = [f"t{i}.jpg" for i in range(6)]
    val = [f"v{i}.jpg" for i in range(3)]
    return {
        "annotations/instances_attributes_train2020.json":
            json.dumps(fashionpedia_json(train, 1)).encode(),
        "annotations/instances_attributes_val2020.json":
            json.dumps(fashionpedia_json(val, 50)).encode(),
        "images/train2020.zip": zipped({f"train/{n}": photo(W, H, i)
                                        for i, n in enumerate(train)}),
        "images/val_test2020.zip": zipped({f"test/{n}": photo(W, H, 20 + i)
                                           for i, n in enumerate([*val, "x0.jpg", "x1.jpg"])}),
    }


# ---------------------------------------------------------------- tests


@pytest.fixture()
def server():
    with FileServer() as srv:
        yield srv


def test_fashionstyle14_download(tmp_path: Path, server: FileServer, monkeypatch, capsys) -> None:
    archive = tar_gz(fs14_files(val_name="valid.csv"))
    server.files["fs14.tar.gz"] = archive
    digest = hashlib.sha256(archive).hexdigest()
    (tmp_path / "project").mkdir()
    before = snapshot(tmp_path)
    code, err = run_stage(tmp_path / "project", monkeypatch, capsys, source="fashionstyle14",
                          url=server.url("fs14.tar.gz"), sha256=digest)
    assert code == 0, err
    raw = tmp_path / "project/data/raw"
    rows = read_csv(raw / "index.csv")
    assert len(rows) == 12
    expected = {0: "train", 1: "train", 2: "val", 3: "test"}
    for row in rows:
        style, name = row["path"].split("/")[1:]
        i = int(name.split("_")[1][0])
        assert (row["label"], row["split"], row["mask"]) == (style, expected[i], "")
        assert (raw / row["path"]).is_file()
    assert {r["path"] for r in rows} >= {"images/rock/rock_2.png", "images/gal/gal_0.jpg"}
    assert read_csv(raw / "quarantine.csv") == []
    assert json.loads((raw / "classes.json").read_text()) == {"labels": STYLES,
                                                             "mask_classes": []}
    summary = json.loads((raw / "summary.json").read_text())
    assert summary["provenance"][0]["sha256"] == digest
    assert summary["tasks"] == ["classification"] and summary["refused"] == 0
    cached = tmp_path / "project/.cache/datasets/fashionstyle14/fs14.tar.gz"
    assert cached.read_bytes() == archive
    assert written_outside(before, snapshot(tmp_path),
                           ("project/data", "project/.cache", "project/params.yaml")) == []
    # a second run uses the cache: no new request
    count = len(server.requests)
    assert run_stage(tmp_path / "project", monkeypatch, capsys, source="fashionstyle14",
                     url=server.url("fs14.tar.gz"), sha256=digest)[0] == 0
    assert len(server.requests) == count


def test_resume_after_dropped_connection(tmp_path: Path, server: FileServer, monkeypatch,
                                         capsys) -> None:
    # big enough (incompressible PNGs) that the cut falls after the first streamed chunk
    files = fs14_files()
    files["FashionStyle14_v1/dataset/gal/big.png"] = photo(800, 1000, 7, "PNG")
    archive = tar_gz(files)
    server.files["fs14.tar.gz"] = archive
    server.drop_once.add("fs14.tar.gz")
    code, err = run_stage(tmp_path, monkeypatch, capsys, source="fashionstyle14",
                          url=server.url("fs14.tar.gz"),
                          sha256=hashlib.sha256(archive).hexdigest())
    assert code == 0, err
    ranges = [r for p, r in server.requests if p == "fs14.tar.gz"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert (tmp_path / ".cache/datasets/fashionstyle14/fs14.tar.gz").read_bytes() == archive
    assert len(read_csv(tmp_path / "data/raw/index.csv")) == 12  # big.png is not listed


def test_checksum_mismatch_is_refused_and_nothing_replaced(tmp_path: Path, server: FileServer,
                                                           monkeypatch, capsys) -> None:
    archive = tar_gz(fs14_files())
    server.files["fs14.tar.gz"] = archive
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/index.csv").write_text("previous run\n")
    wrong = "ab" * 32
    code, err = run_stage(tmp_path, monkeypatch, capsys, source="fashionstyle14",
                          url=server.url("fs14.tar.gz"), sha256=wrong)
    assert code == 2
    assert wrong in err and hashlib.sha256(archive).hexdigest() in err
    assert (tmp_path / "data/raw/index.csv").read_text() == "previous run\n"
    assert list((tmp_path / ".cache/datasets/fashionstyle14").iterdir()) == []


def test_http_404_and_offline_say_how_to_use_data_path(tmp_path: Path, server: FileServer,
                                                       monkeypatch, capsys) -> None:
    code, err = run_stage(tmp_path, monkeypatch, capsys, source="fashionstyle14",
                          url=server.url("missing.tar.gz"))
    assert code == 2 and "HTTP 404" in err and "data.path" in err
    code, err = run_stage(tmp_path, monkeypatch, capsys, source="fashionstyle14",
                          url="http://fashionstyle14.invalid/FashionStyle14_v1.tar.gz")
    assert code == 2 and "does not resolve" in err and "data.path" in err
    assert ".cache/datasets/fashionstyle14/FashionStyle14_v1.tar.gz" in err
    assert not (tmp_path / "data/raw").exists()


def test_default_fashionpedia_download_is_offline_here(tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.setattr("fashionbg.ingest.fetch.requests.Session.get", _no_network)
    code, err = run_stage(tmp_path, monkeypatch, capsys, source="fashionpedia")
    assert code == 2 and "s3.amazonaws.com/ifashionist-dataset" in err and "data.path" in err


def _no_network(*args: object, **kwargs: object) -> None:
    import socket

    import requests

    raise requests.ConnectionError("no network") from socket.gaierror(-2, "Name unknown")


def test_tar_with_escaping_link_is_refused(tmp_path: Path, server: FileServer, monkeypatch,
                                           capsys) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in fs14_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("FashionStyle14_v1/dataset/rock/evil.jpg")
        evil.type, evil.linkname = tarfile.SYMTYPE, "../../../../../../outside.jpg"
        tf.addfile(evil)
    server.files["evil.tar.gz"] = buf.getvalue()
    project = tmp_path / "project"
    project.mkdir()
    before = snapshot(tmp_path)
    code, err = run_stage(project, monkeypatch, capsys, source="fashionstyle14",
                          url=server.url("evil.tar.gz"))
    assert code == 2 and "unsafe member" in err and "evil.jpg" in err
    assert list((project / "data").iterdir()) == []  # atomic_dir's parent, left empty
    assert written_outside(before, snapshot(tmp_path),
                           ("project/.cache", "project/params.yaml", "project/data")) == []
    assert not list((project / ".cache/datasets").glob("unpacked-*"))


def test_fashionpedia_download(tmp_path: Path, server: FileServer, monkeypatch,
                               capsys) -> None:
    for name, data in fashionpedia_files().items():
        server.files[f"fp/{name}"] = data
    code, err = run_stage(tmp_path, monkeypatch, capsys, source="fashionpedia",
                          url=server.url("fp/"))
    assert code == 0, err
    raw = tmp_path / "data/raw"
    rows = read_csv(raw / "index.csv")
    splits = [r["split"] for r in rows]
    # Official val is the test set; val is drawn from train at data.split's 0.2 / (0.6 + 0.2).
    assert splits.count("test") == 3 and splits.count("val") == 2 and splits.count("train") == 4
    assert all(r["path"].startswith("images/val/v") for r in rows if r["split"] == "test")
    assert all(r["label"] == "" and r["mask"] for r in rows)
    classes = json.loads((raw / "classes.json").read_text())
    assert classes == {"labels": [], "mask_classes": ["background", "shirt, blouse", "pants",
                                                      "dress", "belt", "shoe"]}
    first = next(r for r in rows if r["path"] == "images/train/t0.jpg")
    mask = pixels(raw / first["mask"])
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    dress, belt, pants = 3, 4, 2
    assert mask[30, 30] == dress and mask[10, 10] == dress  # the sleeve (a part) is not drawn
    assert mask[22, 30] == belt                            # smaller object on top wins
    assert mask[46, 30] == pants and mask[2, 2] == 0
    inst = json.loads((raw / "instances.json").read_text())
    assert {i["file_name"] for i in inst["images"]} == {r["path"] for r in rows}
    assert len(inst["annotations"]) == 3 * 9 + 2  # + pants in each JSON's first image
    kinds = {type(a["segmentation"]).__name__ for a in inst["annotations"]}
    assert kinds == {"list", "dict"}
    assert inst["attributes"][0]["name"] == "symmetrical"
    assert any(a["attribute_ids"] == [115, 136] for a in inst["annotations"])
    sleeve = next(c for c in inst["categories"] if c["id"] == 31)
    assert sleeve["mask_class"] == 0
    summary = json.loads((raw / "summary.json").read_text())
    assert "none" in summary["classification"] and len(summary["provenance"]) == 4
    assert summary["splits_from"].startswith("official train and val (used as test)")


def test_fetch_restarts_when_the_server_ignores_range_and_finishes_a_full_part(
        tmp_path: Path, server: FileServer) -> None:
    from fashionbg.ingest.fetch import fetch

    data = photo(400, 300, 5, "PNG")
    digest = hashlib.sha256(data).hexdigest()
    server.files["a.png"] = data
    server.drop_once.add("a.png")
    server.ignore_range = True
    assert fetch(server.url("a.png"), tmp_path / "a.png", digest, backoff=0.01) == digest
    assert (tmp_path / "a.png").read_bytes() == data
    # a part file already complete (killed before the rename): the server answers 416
    server.ignore_range = False
    (tmp_path / "b.png.part").write_bytes(data)
    assert fetch(server.url("a.png"), tmp_path / "b.png", digest) == digest
    assert server.requests[-1] == ("a.png", f"bytes={len(data)}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
