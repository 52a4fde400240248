"""Property-based checks of the one error path: whatever params, index rows, COCO annotations or
split lists a user or a remote hands a stage, it succeeds or exits 2 with one line, never a
traceback, and writes nothing outside its project."""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from helpers_params import PARAMS
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_download import photo

# download builds a real dataset when its params are valid: keep that one small.
BASE = copy.deepcopy(PARAMS)
BASE["data"]["demo"].update(images_per_class=3, image_size=[48, 36])
# Stages that run with no data in the project (fetch_model would download weights).
STAGES = ("download", "remove_background", "prepare", "train_classifier",
          "evaluate_classifier", "train_segmenter", "evaluate_segmenter")
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**9),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


def key_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the params, nested sections included."""
    out = []
    for key, value in node.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += key_paths(value, prefix + (key,))
    return out


PATHS = key_paths(BASE)


@contextlib.contextmanager
def project() -> Iterator[Path]:
    """A fresh project inside a folder of its own; on exit, checks nothing landed beside it."""
    with tempfile.TemporaryDirectory() as outer:
        root = Path(outer) / "project"
        root.mkdir()
        yield root
        assert [p.name for p in Path(outer).iterdir()] == ["project"]


def run_stage(root: Path, name: str) -> tuple[int, str]:
    """Run a stage in-process in `root`: (exit code, stderr). A traceback fails the test."""
    main = importlib.import_module(f"stages.{name}").main
    err, cwd = io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        os.chdir(cwd)
    return code, err.getvalue()


def assert_clean_outcome(code: int, err: str, root: Path, stage: str) -> None:
    """Exit 2 with one line, or exit 0 with outputs the next stage can read."""
    event(f"exit {code}: " + (err.strip().splitlines() or [""])[-1][7:40])
    assert code in (0, 2), err
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    else:
        assert_written(root, stage)


def assert_written(root: Path, stage: str) -> None:
    """What a stage that exited 0 wrote: for download, an index whose every row names a
    decodable image (and mask) inside data/raw, a known split and a declared label; for
    remove_background, an alpha for every index image that is not listed as failed; for
    prepare, a cache with one row per index row (an empty index is refused there, not by
    remove_background: it has nothing to do). Other stages never succeed on no data."""
    from PIL import Image

    from fashionbg.contracts.masks import alpha_path, read_failures
    from fashionbg.contracts.prepared import load_prepared
    from fashionbg.contracts.raw import read_classes, read_index

    raw = root / "data" / "raw"
    rows = read_index(raw)
    assert stage in ("download", "remove_background", "prepare"), stage
    assert rows or stage == "remove_background"
    if stage == "download":
        labels = read_classes(raw)["labels"]
        for row in rows:
            assert row.split in ("train", "val", "test") and row.label in labels, row
            for rel in filter(None, (row.path, row.mask)):
                path = (raw / rel).resolve()
                assert path.is_relative_to(raw.resolve()), row
                with Image.open(path) as image:
                    image.load()
    elif stage == "remove_background":
        failed = read_failures(root / "data" / "rembg")
        for row in rows:
            assert row.path in failed or (root / "data/rembg" / alpha_path(row.path)).is_file()
    else:
        assert len(load_prepared(root / "data/prepared/original").labels) == len(rows)


@SETTINGS
@given(stage=st.sampled_from(STAGES), path=st.sampled_from(PATHS),
       change=st.one_of(st.just("delete"), st.just("extra"), values))
def test_generated_params(stage: str, path: tuple[str, ...], change: Any) -> None:
    params = copy.deepcopy(BASE)
    node = params
    for key in path[:-1]:
        node = node[key]
    if change == "delete":
        del node[path[-1]]
    elif change == "extra":
        node["typo_" + path[-1]] = 1
    else:
        node[path[-1]] = change
    with project() as root:
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        assert_clean_outcome(*run_stage(root, stage), root, stage)


index_cells = st.one_of(st.sampled_from(["images/a.jpg", "masks/a.png", "train", "test", "x",
                                         "images/../a.jpg", "/etc/passwd", "", "images/",
                                         "images//a.jpg", "masks\\a.png"]),
                        st.text(max_size=20))
# Mostly well-formed rows, so that the stages get past the index check and meet the files.
likely_rows = st.tuples(st.sampled_from(["images/a.jpg", "images/b.jpg", "images/../a.jpg"]),
                        st.sampled_from(["train", "val", "test", "holdout"]),
                        st.sampled_from(["x", "", "y"]),
                        st.sampled_from(["", "masks/a.png", "masks/../../a.png"])).map(list)
HEADER = ["path", "split", "label", "mask"]


@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.function_scoped_fixture])
@given(header=st.one_of(st.just(HEADER), st.just(HEADER),
                        st.lists(st.text(max_size=6), max_size=5)),
       rows=st.lists(st.one_of(likely_rows, likely_rows,
                               st.lists(index_cells, min_size=0, max_size=5)), max_size=5),
       stage=st.sampled_from(["remove_background", "prepare"]))
def test_malformed_index(u2netp_home: Path, header: list[str], rows: list[list[str]],
                        stage: str) -> None:
    with project() as root:
        (root / "params.yaml").write_text(yaml.safe_dump(BASE))
        shutil.copytree(u2netp_home, root / "models" / "rembg")
        raw = root / "data" / "raw"
        (raw / "images").mkdir(parents=True)
        (raw / "images" / "a.jpg").write_bytes(photo(16, 16, 1))
        with open(raw / "index.csv", "w", newline="") as f:
            f.write(",".join(header) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
        (raw / "classes.json").write_text('{"labels": ["x"], "mask_classes": []}')
        (root / "data" / "rembg").mkdir()
        (root / "data" / "rembg" / "failures.csv").write_text("path,reason\n")
        assert_clean_outcome(*run_stage(root, stage), root, stage)


coco_values = st.recursive(
    st.one_of(scalars, st.sampled_from(["a.jpg", "../a.jpg", "/tmp/a.jpg", "sub/a.jpg"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(
                                ["id", "file_name", "width", "height", "image_id",
                                 "category_id", "segmentation", "bbox", "iscrowd", "area",
                                 "name", "counts", "size"]), inner, max_size=5)),
    max_leaves=12)
coco_images = st.lists(st.fixed_dictionaries(
    {"id": st.integers(0, 3), "file_name": st.sampled_from(["a.jpg", "../a.jpg", "b.jpg"]),
     "width": st.integers(-1, 20), "height": st.integers(-1, 20)}), max_size=3)
coco_files = st.fixed_dictionaries({
    "images": st.one_of(coco_values, coco_images, coco_images),
    "annotations": st.one_of(coco_values, st.lists(st.fixed_dictionaries(
        {"id": st.integers(0, 5), "image_id": st.integers(0, 3),
         "category_id": st.integers(0, 3), "iscrowd": st.sampled_from([0, 1, 2, "x"]),
         "segmentation": coco_values, "bbox": coco_values}), max_size=3)),
    "categories": st.one_of(coco_values, st.just([{"id": 1, "name": "top"}]),
                            st.just([{"id": 1, "name": "top"}, {"id": 2, "name": "bag"}])),
})


@SETTINGS
@given(coco=coco_files)
def test_malformed_coco_annotations(coco: dict[str, Any]) -> None:
    with project() as root:
        data = root / "coco"
        (data / "images").mkdir(parents=True)
        (data / "images" / "a.jpg").write_bytes(photo(16, 16, 2))
        (data / "instances_train.json").write_text(json.dumps(coco))
        params = copy.deepcopy(BASE)
        params["data"].update(source="coco", path=str(data))
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        assert_clean_outcome(*run_stage(root, "download"), root, "download")


list_lines = st.lists(st.one_of(st.sampled_from(["a/a0.jpg", "b/b0.jpg", "../a/a0.jpg",
                                                 "/etc/passwd", "a/missing.jpg", "path,x"]),
                                st.text(max_size=15)), max_size=6)


@SETTINGS
@given(lists=st.dictionaries(st.sampled_from(["train.txt", "val.csv", "test.txt"]), list_lines,
                             max_size=3))
def test_generated_split_lists(lists: dict[str, list[str]]) -> None:
    with project() as root:
        photos = root / "photos"
        for c in "ab":
            for i in range(4):
                (photos / c).mkdir(parents=True, exist_ok=True)
                (photos / c / f"{c}{i}.jpg").write_bytes(photo(16, 16, i))
        for name, lines in lists.items():
            (photos / name).write_text("\n".join(lines) + "\n")
        params = copy.deepcopy(BASE)
        params["data"].update(source="folder", path=str(photos), max_bad_fraction=1.0)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        assert_clean_outcome(*run_stage(root, "download"), root, "download")
