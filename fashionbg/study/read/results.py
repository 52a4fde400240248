"""What the experiments of a study hold, read from their git refs: the refs DVC writes for every
finished experiment and that `dvc exp push` / `dvc exp pull` move between machines, so the
report sees whatever experiments are present, whoever ran them."""
from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from fashionbg.contracts.tasks import TASKS
from fashionbg.core import paths
from fashionbg.core.params import UniqueKeyLoader
from fashionbg.segment.detections import MaskAP
from fashionbg.study.experiments import BadExperiment, existing_experiments, git_file
from fashionbg.study.plan.definition import Cell

log = logging.getLogger("study")
# Each headline metrics file and its detail (the variant and task it scored, per-class scores).


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    score: float | None              # the task's headline metric on its own variant's test set
    cross: float | None              # the same model on the other variant's test images
    # Per test image, in sorted path order: correctness (classify), or intersection, union and
    # ground-truth pixels per class in the metrics' class order (semantic), or the detections
    # mask AP is recomputed from (instance).
    per_image: np.ndarray | MaskAP | None
    images: tuple[str, ...]
    # The same model on every built variant's test images: the headline metric, and the
    # per-image results in the same layout as per_image (instance: its own test images only).
    by_test: dict[str, float | None]
    tested: Mapping[str, np.ndarray | MaskAP]


def known(score: float | None) -> float:
    """A score the caller has checked is there (e.g. of a seed picked for having one)."""
    assert score is not None
    return score


def read_results(cells: list[Cell]) -> tuple[list[CellResult], list[Cell]]:
    """The results of the cells that have an experiment whose params match, and the missing
    (an experiment whose files cannot be read is named in one warning and counts as missing)."""
    present = existing_experiments()
    results, missing = [], []
    for cell in cells:
        rev = present.get(cell.name)
        result = None
        if rev:
            try:
                result = _read_cell(cell, rev)
            except BadExperiment as err:
                log.warning("experiment %s (%s) left out of the report: %s; see it with "
                            "`git show %s:%s`", cell.name, rev[:7], err, rev[:7], err.file)
        if result:
            results.append(result)
        else:
            missing.append(cell)
    return results, missing


def _read_cell(cell: Cell, rev: str) -> CellResult | None:
    params = parse_params(_required(rev, str(paths.PARAMS)))
    if any(_lookup(params, key) != value for key, value in cell.params.items()):
        return None   # a stale experiment under the same name
    spec = TASKS[cell.arm.task]
    key, metrics_path, detail_path = spec.key_metric, str(spec.metrics), str(spec.detail)
    score, cross = parse_headline(_required(rev, metrics_path), metrics_path, key)
    detail = parse_json(_required(rev, detail_path), detail_path)
    if detail.get("variant") != cell.variant or detail.get("task", "classify") != cell.arm.task:
        return None   # the experiment did not run this cell's evaluation
    classes, by_test = parse_detail(detail, detail_path, cell.arm.task, key)
    path = str(spec.predictions)
    tested: Mapping[str, np.ndarray | MaskAP]
    if cell.arm.task == "instance":   # the model's own test images only
        found, images = parse_detections(_required(rev, path), path, cell.variant, score)
        tested = {cell.variant: found}
    else:
        tested, images = parse_predictions(_required(rev, path), path, cell.arm.task,
                                           cell.variant, classes)
    return CellResult(cell, score, cross, tested.get(cell.variant), images, by_test, tested)


def _required(rev: str, path: str) -> str:
    text = git_file(rev, path)
    if text is None:
        raise BadExperiment(path, "missing from the experiment")
    return text


def parse_params(text: str) -> dict[str, Any]:
    """An experiment's params.yaml: a mapping."""
    try:
        params = yaml.load(text, Loader=UniqueKeyLoader)
    except (yaml.YAMLError, RecursionError) as err:
        raise BadExperiment(str(paths.PARAMS), "not valid YAML: "
                            + _first_line(getattr(err, "problem", None) or err)) from err
    if not isinstance(params, dict):
        raise BadExperiment(str(paths.PARAMS), f"holds a {type(params).__name__}, not a "
                            "mapping of sections")
    return params


def parse_json(text: str, file: str) -> dict[str, Any]:
    """A JSON object, without NaN or infinities (an evaluation writes none)."""
    def refuse(constant: str) -> None:
        raise BadExperiment(file, f"holds {constant}, not a number")
    try:
        data = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as err:   # JSONDecodeError is a ValueError
        raise BadExperiment(file, "not valid JSON: " + _first_line(err)) from err
    if not isinstance(data, dict):
        raise BadExperiment(file, f"holds a JSON {type(data).__name__}, not an object")
    return data


def parse_headline(text: str, file: str, key: str) -> tuple[float | None, float | None]:
    """The headline metric on the model's own test images, and on the other variant's."""
    data = parse_json(text, file)
    test, cross = _section(data, file, "test"), _section(data, file, "cross")
    if key not in test:
        raise BadExperiment(file, f"test.{key} is missing")
    return _score(file, f"test.{key}", test[key]), _score(file, f"cross.{key}", cross.get(key))


def parse_detail(data: dict[str, Any], file: str, task: str, key: str
                 ) -> tuple[list[str], dict[str, float | None]]:
    """The classes of the per-class scores (semantic) and the metric per test variant."""
    classes = []
    if task == "semantic":
        per_class = _section(_section(data, file, "test"), file, "per_class_iou", "test.")
        classes = [str(c) for c in per_class]
    by_test = {}
    tests = _section(data, file, "by_test_variant") if "by_test_variant" in data else {}
    for variant, scores in tests.items():
        if not isinstance(scores, dict):
            raise BadExperiment(file, f"by_test_variant.{variant} is not an object")
        by_test[str(variant)] = _score(file, f"by_test_variant.{variant}.{key}",
                                       scores.get(key))
    return classes, by_test


def _section(data: dict[str, Any], file: str, key: str, within: str = "") -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise BadExperiment(file, f"{within}{key} is " + (
            "missing" if value is None else f"a {type(value).__name__}, not an object"))
    return value


def _score(file: str, key: str, value: Any) -> float | None:
    """A metric: a number from 0 to 1, or null (mask AP of images without ground truth)."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 <= value <= 1):
        raise BadExperiment(file, f"{key} = {_short(value)} is not a score from 0 to 1")
    return float(value)


COLUMNS = {"classify": ("path", "tested_on", "correct"),
           "semantic": ("path", "tested_on", "class", "intersection", "union", "truth")}


def parse_predictions(text: str, file: str, task: str, variant: str, classes: list[str]
                      ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Per test variant, the per-image results in sorted path order, and those paths: the
    model's own test images, which every other test variant must hold too (pairs by path)."""
    needed = COLUMNS[task]
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing == ["truth"]:
            raise BadExperiment(file, "no truth column: scored by an older evaluate_segmenter; "
                                "remove the experiment (dvc exp remove) and run the study again")
        if missing:
            raise BadExperiment(file, "no column " + ", ".join(missing))
        rows = list(reader)
    except csv.Error as err:
        raise BadExperiment(file, f"not valid CSV: {err}") from err
    seen: set[tuple[str, ...]] = set()
    by_variant: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in enumerate(rows, start=2):
        if None in row or any(row[c] is None for c in needed):
            fields = sum(v is not None for k, v in row.items() if k is not None)
            raise BadExperiment(file, f"line {line} has {fields + len(row.get(None) or [])} "
                                f"fields, not the header's {len(reader.fieldnames or [])}")
        where = tuple(row[c] for c in needed[:3 if task == "semantic" else 2])
        if not row["path"] or not row["tested_on"]:
            raise BadExperiment(file, f"line {line} has an empty path or tested_on")
        if where in seen:
            raise BadExperiment(file, f"line {line} repeats {', '.join(where)}")
        seen.add(where)
        by_variant.setdefault(row["tested_on"], []).append((line, row))
    if variant not in by_variant:
        raise BadExperiment(file, f"no row tested on {variant}, the variant the model was "
                            "trained on")
    images = tuple(sorted({r["path"] for _, r in by_variant[variant]}))
    tested = {}
    for tested_on, picked in by_variant.items():
        paths_here = {r["path"] for _, r in picked}
        if paths_here != set(images):
            odd = sorted(paths_here ^ set(images))[0]
            raise BadExperiment(file, f"the images tested on {tested_on} are not those tested "
                                f"on {variant} (e.g. {_short(odd)})")
        tested[tested_on] = (_correctness(file, picked, images) if task == "classify"
                             else _terms(file, picked, images, classes))
    return tested, images


MAX_SIDE, MAX_FOUND = 100_000, 1000   # pixels of a side; masks of one image


def parse_detections(text: str, file: str, variant: str, reported: float | None
                     ) -> tuple[MaskAP, tuple[str, ...]]:
    """The model's detections and the ground truth on its own test images (sorted by path),
    every run length checked before pycocotools reads it, and the mask AP they give checked
    against the reported one."""
    data = parse_json(text, file)
    if data.get("tested_on") != variant:
        raise BadExperiment(file, f"tested_on = {_short(data.get('tested_on'))}, not "
                            f"{variant}, the variant the model was trained on")
    classes, records = data.get("classes"), data.get("images")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise BadExperiment(file, f"classes = {_short(classes)} is not a list of class names")
    if not (isinstance(records, list) and records):
        raise BadExperiment(file, "images is not a non-empty list of test images")
    by_path = {}
    for i, record in enumerate(records):
        path = _image(file, f"images[{i}]", record, len(classes))
        if path in by_path:
            raise BadExperiment(file, f"images[{i}] repeats path {_short(path)}")
        by_path[path] = record
    images = tuple(sorted(by_path))
    found = MaskAP([by_path[p] for p in images], len(classes))
    recomputed = found.score(np.ones(len(images)))
    if reported is not None and not abs(recomputed - reported) <= 1e-3:
        raise BadExperiment(file, f"its detections give mask AP {recomputed:.4f}, not the "
                            f"reported {reported:.4f}")
    return found, images


def _image(file: str, where: str, record: Any, labels: int) -> str:
    """One test image's record checked: its path, size, and masks whose run lengths cover the
    image exactly (pycocotools' C code trusts them)."""
    if not isinstance(record, dict):
        raise BadExperiment(file, f"{where} is not an object")
    path, size = record.get("path"), record.get("size")
    if not (isinstance(path, str) and path):
        raise BadExperiment(file, f"{where}.path = {_short(path)} is not a file path")
    if not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_SIDE for n in size)):
        raise BadExperiment(file, f"{where}.size = {_short(size)} is not [height, width]")
    for key in ("truth", "detections"):
        items = record.get(key)
        if not (isinstance(items, list) and len(items) <= MAX_FOUND):
            raise BadExperiment(file, f"{where}.{key} is not a list of at most {MAX_FOUND} "
                                "masks")
        for j, item in enumerate(items):
            _mask(file, f"{where}.{key}[{j}]", item, labels, size, key == "detections")
    return path


def _mask(file: str, where: str, item: Any, labels: int, size: list[int], scored: bool
          ) -> None:
    if not isinstance(item, dict):
        raise BadExperiment(file, f"{where} is not an object")
    label, counts = item.get("label"), item.get("counts")
    if not (isinstance(label, int) and not isinstance(label, bool) and 1 <= label <= labels):
        raise BadExperiment(file, f"{where}.label = {_short(label)} is not a class from 1 to "
                            f"{labels}")
    if scored:
        _score(file, f"{where}.score", item.get("score"))
        if item.get("score") is None:
            raise BadExperiment(file, f"{where}.score is missing")
    pixels = size[0] * size[1]
    if not (isinstance(counts, list) and len(counts) <= pixels + 1 and all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            and sum(counts) == pixels):
        raise BadExperiment(file, f"{where}.counts is not a run-length encoding of a "
                            f"{size[0]}x{size[1]} mask (integers >= 0 summing to {pixels})")


def _correctness(file: str, rows: list[tuple[int, dict[str, str]]], images: tuple[str, ...]
                 ) -> np.ndarray:
    correct = {}
    for line, r in rows:
        if r["correct"].strip() not in ("0", "1"):
            raise BadExperiment(file, f"line {line}: correct = {_short(r['correct'])} is "
                                "not 0 or 1")
        correct[r["path"]] = float(r["correct"])
    return np.array([correct[p] for p in images])


def _terms(file: str, rows: list[tuple[int, dict[str, str]]], images: tuple[str, ...],
           classes: list[str]) -> np.ndarray:
    """(images, classes, 3): intersection, union and truth pixels per image and class."""
    index = {p: i for i, p in enumerate(images)}
    column = {c: i for i, c in enumerate(classes)}
    terms = np.zeros((len(images), len(classes), 3))
    for line, r in rows:
        if r["class"] not in column:
            raise BadExperiment(file, f"line {line}: class {_short(r['class'])} is not one "
                                "of the per_class_iou classes of the detail metrics")
        counts = [r[c].strip() for c in ("intersection", "union", "truth")]
        if not all(c.isascii() and c.isdigit() and len(c) <= 15 for c in counts):
            raise BadExperiment(file, f"line {line}: intersection, union, truth = "
                                f"{_short(counts)} are not pixel counts (integers >= 0)")
        terms[index[r["path"]], column[r["class"]]] = [int(c) for c in counts]
    return terms


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(err: object) -> str:
    return (str(err).strip().splitlines() or ["no detail"])[0]


def _lookup(params: dict[str, Any], key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
