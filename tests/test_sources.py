"""Sources read from data.path: folders of photos (good, convertible and bad), split lists,
COCO with EXIF-rotated photos and crowds, Fashionpedia subsamples, hostile archives; params."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from helpers_params import params_with
from PIL import Image
from test_download import (
    fashionpedia_files,
    fs14_files,
    photo,
    pixels,
    read_csv,
    rect,
    rle_rect,
    run_stage,
    snapshot,
    written_outside,
)
from test_hygiene import (
    convertible_images,
    rotated_jpeg,
    small_bomb_limit,  # noqa: F401 (a fixture, used by name)
    write_bad_images,
)

from fashionbg.core.errors import ParamError
from fashionbg.ingest.splits import draw_splits, subsample
from fashionbg.sources import fashionpedia
from fashionbg.sources.registry import SOURCES


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def photo_folder(root: Path, classes: tuple[str, ...] = ("coat", "dress", "shirt"),
                 per_class: int = 10) -> Path:
    return write_tree(root, {f"{c}/{c}_{i:02d}.jpg": photo(16, 16, 100 * n + i)
                             for n, c in enumerate(classes) for i in range(per_class)})


@pytest.mark.usefixtures("small_bomb_limit")
def test_folder_with_bad_and_convertible_photos(tmp_path: Path, monkeypatch, capsys) -> None:
    photos = photo_folder(tmp_path / "mine", per_class=20)
    bad = write_bad_images(photos / "dress")
    for name, data in convertible_images().items():
        (photos / "shirt" / name).write_bytes(data)
    (photos / "README.txt").write_text("my photos\n")  # beside the classes: not a photo
    (photos / "coat" / ".DS_Store").write_bytes(b"\0\0")
    before = snapshot(tmp_path)
    code, err = run_stage(tmp_path / "project", monkeypatch, capsys, source="folder",
                          path=str(photos), max_bad_fraction=0.2)
    assert code == 0, err
    raw = tmp_path / "project/data/raw"
    refused = {r["path"]: r["reason"] for r in read_csv(raw / "quarantine.csv")}
    assert {p: r.split(":")[0] for p, r in refused.items()} == {
        f"dress/{name}": kind for name, kind in bad.items()}
    rows = read_csv(raw / "index.csv")
    assert len(rows) == 60 + len(convertible_images())
    paths = {r["path"] for r in rows}
    assert {"images/shirt/photo.webp.png", "images/shirt/rotated.jpg",
            "images/shirt/sixteen.png"} <= paths
    with Image.open(raw / "images/shirt/rotated.jpg") as stored:
        assert stored.size == (20, 40) and stored.mode == "RGB"  # turned upright, re-encoded
        assert not stored.getexif().get(0x0112)
    assert pixels(raw / "images/shirt/palette.png").shape == (8, 8, 3)
    assert (raw / "images/coat/coat_00.jpg").read_bytes() == (photos / "coat/coat_00.jpg"
                                                               ).read_bytes()
    summary = json.loads((raw / "summary.json").read_text())
    assert summary["refused"] == len(bad) and summary["refused_by_reason"]["unreadable"] == 1
    assert json.loads((raw / "classes.json").read_text())["labels"] == ["coat", "dress", "shirt"]
    # the user's folder is untouched, and nothing was written outside the project
    assert written_outside(before, snapshot(tmp_path), ("project",)) == []
    assert snapshot(photos) == {k[len("mine/"):]: v for k, v in before.items()
                                if k.startswith("mine/")}


@pytest.mark.usefixtures("small_bomb_limit")
def test_too_many_bad_files_stop_the_run_but_keep_the_list(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    photos = photo_folder(tmp_path / "mine", per_class=5)
    bad = write_bad_images(photos / "coat")
    (tmp_path / "project/data/raw").mkdir(parents=True)
    (tmp_path / "project/data/raw/index.csv").write_text("previous\n")
    code, err = run_stage(tmp_path / "project", monkeypatch, capsys, source="folder",
                          path=str(photos))
    assert code == 2 and "max_bad_fraction" in err and "raw.quarantine-failed.csv" in err
    assert "1 decompression bomb" in err
    kept = read_csv(tmp_path / "project/data/raw.quarantine-failed.csv")
    assert {r["path"] for r in kept} == {f"coat/{name}" for name in bad}
    assert (tmp_path / "project/data/raw/index.csv").read_text() == "previous\n"
    # a later good run removes the stale list
    code, err = run_stage(tmp_path / "project", monkeypatch, capsys, source="folder",
                          path=str(photos), max_bad_fraction=1.0)
    assert code == 0, err
    assert not (tmp_path / "project/data/raw.quarantine-failed.csv").exists()


def test_folder_splits_are_stratified_deterministic_and_nested(tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    photos = photo_folder(tmp_path / "mine", per_class=20)

    def run(**data: object) -> list[dict[str, str]]:
        code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="folder",
                              path=str(photos), **data)
        assert code == 0, err
        return read_csv(tmp_path / "p/data/raw/index.csv")

    rows = run(split=[0.5, 0.25, 0.25])
    for label in ("coat", "dress", "shirt"):
        counts = [sum(r["label"] == label and r["split"] == s for r in rows)
                  for s in ("train", "val", "test")]
        assert counts == [10, 5, 5]
    assert run(split=[0.5, 0.25, 0.25]) == rows
    small, smaller = run(max_images=30), run(max_images=15)
    assert len(small) == 30 and len(smaller) == 15
    assert {r["path"] for r in smaller} <= {r["path"] for r in small}
    assert {r["label"] for r in smaller} == {"coat", "dress", "shirt"}


def test_folder_split_lists_and_archive_with_wrapper(tmp_path: Path, monkeypatch, capsys) -> None:
    files = {f"photos/{c}/{i}.jpg": photo(8, 8, i) for c in ("a", "b") for i in range(3)}
    files["photos/train.txt"] = b"a/0.jpg\na/1.jpg\nb/0.jpg\nb/1.jpg\nb/9.jpg\n"
    files["photos/test.txt"] = b"path,label\na/2.jpg,a\n"  # a header line, a 2nd column
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="folder",
                          path=str(archive), split=[0.5, 0.5, 0.0], max_bad_fraction=0.5)
    assert code == 0, err
    rows = {r["path"]: r["split"] for r in read_csv(tmp_path / "p/data/raw/index.csv")}
    assert rows["images/a/2.jpg"] == "test" and "images/b/2.jpg" not in rows  # unlisted
    assert sorted(rows.values()).count("val") == 2  # drawn from train: no val list
    assert read_csv(tmp_path / "p/data/raw/quarantine.csv") == [
        {"path": "b/9.jpg", "reason": "missing: listed in train.txt but not found"}]
    summary = json.loads((tmp_path / "p/data/raw/summary.json").read_text())
    assert summary["unlisted"] == 1 and "val drawn from train" in summary["splits_from"]


def test_fashionstyle14_from_unpacked_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    root = write_tree(tmp_path / "copy", fs14_files())
    code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="fashionstyle14",
                          path=str(root))
    assert code == 0, err
    assert len(read_csv(tmp_path / "p/data/raw/index.csv")) == 12
    (root / "FashionStyle14_v1/test.csv").unlink()
    code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="fashionstyle14",
                          path=str(root))
    assert code == 2 and "test" in err and "data.source: folder" in err


def test_zip_slip_archive_in_data_path(tmp_path: Path, monkeypatch, capsys) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("photos/a/1.jpg", photo(8, 8, 1))
        zf.writestr("../../../../escaped.jpg", photo(8, 8, 2))
    (tmp_path / "project").mkdir()
    before = snapshot(tmp_path)
    code, err = run_stage(tmp_path / "project", monkeypatch, capsys, source="folder",
                          path=str(archive))
    assert code == 2 and "unsafe member" in err
    assert written_outside(before, snapshot(tmp_path),
                           ("project/params.yaml", "project/data", "project/.cache")) == []
    assert not any((tmp_path / "project/.cache/datasets").iterdir())
    assert not list((tmp_path / "project/data").iterdir())


def coco_folder(root: Path) -> Path:
    """A COCO dataset: upright photos, one EXIF-rotated photo annotated on its stored pixels,
    a crowd region, a photo whose JSON size is wrong, and a listed photo that is missing."""
    cats = [{"id": 1, "name": "top", "supercategory": "clothes"},
            {"id": 2, "name": "bag", "supercategory": "accessory"},
            {"id": 3, "name": "people", "supercategory": "person"}]
    images, anns = [], []
    names = [f"p{i}.jpg" for i in range(4)] + ["rotated.jpg", "wrong.jpg", "gone.jpg"]
    for i, name in enumerate(names):
        w, h = (40, 20) if name == "rotated.jpg" else (32, 24)
        images.append({"id": i + 1, "file_name": name, "width": 99 if name == "wrong.jpg"
                       else w, "height": h})
        if name != "rotated.jpg":
            write_tree(root, {f"images/{name}": photo(32, 24, i)} if name != "gone.jpg" else {})
        anns.append({"id": 10 * i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": [rect(0, 0, 8, 8)], "area": 64, "bbox": [0, 0, 8, 8]})
    anns.append({"id": 99, "image_id": 1, "category_id": 3, "iscrowd": 1, "area": 96,
                 "segmentation": rle_rect(24, 32, 20, 0, 32, 8, False), "bbox": [20, 0, 12, 8]})
    anns.append({"id": 98, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 16,
                 "segmentation": [rect(2, 2, 6, 6)], "bbox": [2, 2, 4, 4]})
    write_tree(root, {"images/rotated.jpg": rotated_jpeg(),
                      "annotations/instances_default.json": json.dumps(
                          {"images": images, "annotations": anns, "categories": cats}).encode(),
                      "annotations/notes.json": b'{"not": "coco"}'})
    return root


def test_coco_masks_orientation_crowds_and_instances(tmp_path: Path, monkeypatch,
                                                     capsys) -> None:
    root = coco_folder(tmp_path / "coco")
    code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="coco", path=str(root),
                          max_bad_fraction=0.5, split=[0.4, 0.4, 0.2])
    assert code == 0, err
    raw = tmp_path / "p/data/raw"
    refused = {r["path"]: r["reason"] for r in read_csv(raw / "quarantine.csv")}
    assert refused["instances_default/wrong.jpg"].startswith("annotation size 99x24")
    assert refused["instances_default/gone.jpg"].startswith("missing")
    rows = {r["path"]: r for r in read_csv(raw / "index.csv")}
    assert len(rows) == 5 and all(r["label"] == "" for r in rows.values())
    assert json.loads((raw / "classes.json").read_text())["mask_classes"] == [
        "background", "top", "bag", "people"]
    p0 = pixels(raw / rows["images/instances_default/p0.jpg"]["mask"])
    assert p0[4, 4] == 2 and p0[1, 1] == 1 and p0[4, 25] == 255 and p0[20, 20] == 0
    turned = pixels(raw / rows["images/instances_default/rotated.jpg"]["mask"])
    assert turned.shape == (40, 20)  # upright, like the stored photo
    assert turned[:7, -7:].all() and turned.sum() == 64  # top-left of the stored pixels
    inst = json.loads((raw / "instances.json").read_text())
    by_name = {i["file_name"]: i for i in inst["images"]}
    rot = by_name["images/instances_default/rotated.jpg"]
    assert (rot["width"], rot["height"]) == (20, 40)
    (rot_ann,) = [a for a in inst["annotations"] if a["image_id"] == rot["id"]]
    assert isinstance(rot_ann["segmentation"], dict) and rot_ann["segmentation"]["size"] == [40,
                                                                                           20]
    assert rot_ann["bbox"][0] >= 12  # moved to the right-hand side
    assert {c["name"]: c["mask_class"] for c in inst["categories"]} == {"top": 1, "bag": 2,
                                                                       "people": 3}
    code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="coco", path=str(root),
                          max_bad_fraction=0.5, mask_grouping="binary", split=[0.4, 0.4, 0.2])
    p0 = pixels(raw / "masks/instances_default/p0.png")
    assert code == 0 and p0[4, 4] == 1 and p0.max() == 255


def test_fashionpedia_from_folder_unpacks_only_the_subsample(tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    root = write_tree(tmp_path / "fp", {Path(k).name: v for k, v in fashionpedia_files().items()})
    unpacked = []
    real_extract = fashionpedia.extract
    monkeypatch.setattr(fashionpedia, "extract",
                        lambda *a, **k: unpacked.append(real_extract(*a, **k)) or unpacked[-1])
    code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="fashionpedia",
                          path=str(root), max_images=4, mask_grouping="supercategory")
    assert code == 0, err
    rows = read_csv(tmp_path / "p/data/raw/index.csv")
    assert len(rows) == 4 and sum(unpacked) == 4
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    classes = json.loads((tmp_path / "p/data/raw/classes.json").read_text())
    assert classes["mask_classes"] == ["background", "upperbody", "lowerbody", "wholebody",
                                       "waist", "legs and feet"]
    assert snapshot(root) == {Path(k).name: v for k, v in fashionpedia_files().items()}


@pytest.mark.parametrize(("source", "data", "key"), [
    ("folder", {}, "data.path"),
    ("folder", {"path": "/no/such/folder"}, "data.path"),
    ("folder", {"url": "ftp://example.org/x.zip"}, "data.url"),
    ("fashionstyle14", {"sha256": "abc"}, "data.sha256"),
    ("fashionpedia", {"sha256": "ab" * 32}, "data.sha256"),
    ("fashionstyle14", {"max_images": 0}, "data.max_images"),
    ("fashionstyle14", {"split": [0.5, 0.5]}, "data.split"),
    ("coco", {"path": ".", "mask_grouping": "parts"}, "data.mask_grouping"),
    ("fashionpedia", {"seed": -1}, "data.seed"),
])
def test_params_are_checked_before_anything_is_written(source: str, data: dict, key: str) -> None:
    with pytest.raises(ParamError) as err:
        SOURCES[source].validate(params_with(data=data)["data"])
    assert err.value.key == key


def test_subsample_keeps_group_shares_and_draw_is_stratified() -> None:
    items = [f"{g}/{i}" for g in "abc" for i in range(30)]
    group = lambda n: n[0]  # noqa: E731
    picked = subsample(items, 9, str, group, seed=1)
    assert sorted(n[0] for n in picked) == list("aaabbbccc")
    assert subsample(items, 9, str, group, seed=1) == picked
    assert set(subsample(items, 6, str, group, seed=1)) <= set(picked)
    splits = draw_splits(items, str, group, (0.6, 0.2, 0.2), seed=3)
    assert [sum(s == "val" and n[0] == g for n, s in splits.items()) for g in "abc"] == [6] * 3



@pytest.mark.parametrize(("source", "data", "expected"), [
    ("demo", {"path": "/photos"}, "data.path = '/photos' is not allowed; expected null for "
                                  "data.source = demo (it generates its photos)"),
    ("demo", {"mask_grouping": "binary"}, "expected category for data.source = demo"),
    ("folder", {"path": ".", "mask_grouping": "supercategory"},
     "expected category for data.source = folder (it has no masks to group)"),
])
def test_a_key_the_source_would_ignore_is_refused_by_name(tmp_path: Path, monkeypatch, capsys,
                                                          source: str, data: dict,
                                                          expected: str) -> None:
    code, err = run_stage(tmp_path, monkeypatch, capsys, source=source, **data)
    assert code == 2 and expected in err and not (tmp_path / "data").exists(), err


def test_an_empty_split_is_refused_and_a_class_missing_from_test_is_named(
        tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    photos = photo_folder(tmp_path / "mine", per_class=2)
    # Two photos a class at 60/20/20: each class gets one train photo and one val or test one.
    code, err = run_stage(tmp_path / "project", monkeypatch, capsys, source="folder",
                          path=str(photos), split=[0.5, 0.5, 0.0])
    assert code == 2 and "the test split would be empty (train 3, val 3, test 0)" in err, err
    assert not (tmp_path / "project" / "data" / "raw").exists()
    rest = [f"{c}/{c}_{i:02d}.jpg" for c in ("coat", "dress", "shirt") for i in range(2)][1:]
    write_tree(photos, {"test.txt": b"coat/coat_00.jpg\n",
                        "train.txt": "\n".join(rest).encode()})
    code, err = run_stage(tmp_path / "project", monkeypatch, capsys, source="folder",
                          path=str(photos), split=[0.5, 0.5, 0.0])
    assert code == 0, err
    assert "class dress has no test images" in caplog.text
    assert "class shirt has no test images" in caplog.text
    assert "class coat has no test images" not in caplog.text


def test_only_the_official_val_part_of_fashionpedia_is_split_deterministically(
        tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    files = {Path(k).name: v for k, v in fashionpedia_files().items()
             if "train" not in Path(k).name}
    root = write_tree(tmp_path / "fp", files)
    caplog.set_level("INFO")

    def run() -> list[dict[str, str]]:
        code, err = run_stage(tmp_path / "p", monkeypatch, capsys, source="fashionpedia",
                              path=str(root), split=[0.4, 0.3, 0.3])
        assert code == 0, err
        return read_csv(tmp_path / "p/data/raw/index.csv")

    rows = run()
    assert len(rows) == 3 and sorted(r["split"] for r in rows) == ["test", "train", "val"]
    assert "splits: drawn, stratified: 40%/30%/30%" in caplog.text
    assert run() == rows
