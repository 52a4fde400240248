"""What the experiments of a study hold, read from their git refs: the refs DVC writes for every
finished experiment and that `dvc exp push` / `dvc exp pull` move between machines, so the
report sees whatever experiments are present, whoever ran them."""
from __future__ import annotations

import csv
import io
import json
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from fashionbg.core import paths
from fashionbg.core.errors import UserError
from fashionbg.study.definition import TASKS, Cell

EXPERIMENT_REFS = "refs/exps/"
QUEUE_REFS = "refs/exps/celery/"   # DVC's own bookkeeping of queued and failed runs
# Each headline metrics file and its detail (the variant and task it scored, per-class scores).
DETAIL = {str(paths.CLASSIFICATION_METRICS): paths.CLASSIFICATION_DETAIL,
          str(paths.SEGMENTATION_METRICS): paths.SEGMENTATION_DETAIL}


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    score: float | None              # the task's headline metric on its own variant's test set
    cross: float | None              # the same model on the other variant's test images
    # Per test image, in sorted path order: correctness (classify), or intersection, union and
    # ground-truth pixels per class in the metrics' class order (semantic); None for instance
    # segmentation (mask AP has no per-image terms).
    per_image: np.ndarray | None
    images: tuple[str, ...]
    # The same model on every built variant's test images: the headline metric, and the
    # per-image results in the same layout as per_image (empty for instance segmentation).
    by_test: dict[str, float | None]
    tested: dict[str, np.ndarray]


def existing_experiments() -> dict[str, str]:
    """Name → commit of every finished experiment in this repository."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)",
                          EXPERIMENT_REFS], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        rev, ref = line.split(" ", 1)
        if not ref.startswith(QUEUE_REFS):
            found[ref.rsplit("/", 1)[-1]] = rev
    return found


def git_file(rev: str, path: str) -> str | None:
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def read_results(cells: list[Cell]) -> tuple[list[CellResult], list[Cell]]:
    """The results of the cells that have an experiment whose params match, and the missing."""
    present = existing_experiments()
    results, missing = [], []
    for cell in cells:
        rev = present.get(cell.name)
        result = _read_cell(cell, rev) if rev else None
        if result:
            results.append(result)
        else:
            missing.append(cell)
    return results, missing


def _read_cell(cell: Cell, rev: str) -> CellResult | None:
    params = yaml.safe_load(git_file(rev, str(paths.PARAMS)) or "{}")
    if any(_lookup(params, key) != value for key, value in cell.params.items()):
        return None   # a stale experiment under the same name
    _, _, key, metrics_path = TASKS[cell.arm.task]
    headline = json.loads(git_file(rev, metrics_path) or "{}")
    detail = json.loads(git_file(rev, str(DETAIL[metrics_path])) or "{}")
    if detail.get("variant") != cell.variant or detail.get("task", "classify") != cell.arm.task:
        return None   # the experiment did not run this cell's evaluation
    tested, images = _per_image(cell, rev, list(detail["test"].get("per_class_iou", {})))
    by_test = {v: scores.get(key) for v, scores in detail.get("by_test_variant", {}).items()}
    return CellResult(cell, headline["test"].get(key), headline["cross"].get(key),
                      tested.get(cell.variant), images, by_test, tested)


def _lookup(params: dict[str, Any], key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _per_image(cell: Cell, rev: str, classes: list[str]
               ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Per test variant, the per-image results in sorted path order, and those paths."""
    if cell.arm.task == "instance":
        return {}, ()
    path = (paths.CLASSIFICATION_PREDICTIONS if cell.arm.task == "classify"
            else paths.SEGMENTATION_PREDICTIONS)
    rows = list(csv.DictReader(io.StringIO(git_file(rev, str(path)) or "")))
    if rows and cell.arm.task == "semantic" and "truth" not in rows[0]:
        raise UserError(f"experiment {cell.name} was scored by an older evaluate_segmenter "
                        f"(no truth column in {path}); remove it with `dvc exp remove "
                        f"{cell.name}` and run the study again")
    images = tuple(sorted({r["path"] for r in rows if r["tested_on"] == cell.variant}))
    tested = {}
    for variant in dict.fromkeys(r["tested_on"] for r in rows):
        picked = [r for r in rows if r["tested_on"] == variant]
        tested[variant] = (_correctness(picked, images) if cell.arm.task == "classify"
                           else _terms(picked, images, classes))
    return tested, images


def _correctness(rows: list[dict[str, str]], images: tuple[str, ...]) -> np.ndarray:
    correct = {r["path"]: float(r["correct"]) for r in rows}
    return np.array([correct[p] for p in images])


def _terms(rows: list[dict[str, str]], images: tuple[str, ...], classes: list[str]
           ) -> np.ndarray:
    """(images, classes, 3): intersection, union and truth pixels per image and class."""
    index = {p: i for i, p in enumerate(images)}
    terms = np.zeros((len(images), len(classes), 3))
    for r in rows:
        terms[index[r["path"]], classes.index(r["class"])] = (
            int(r["intersection"]), int(r["union"]), int(r["truth"]))
    return terms
