"""Per-image instance detections and ground truth, and mask AP recomputed from them on any
multiset of test images.

Masks travel as uncompressed COCO RLE (run lengths in column-major order, starting with a run
of zeros), which a reader can check with plain integer arithmetic before pycocotools' C code
sees them. Mask AP is pycocotools' COCOeval: `evaluate()` matches detections to ground truth
once per image; `accumulate()`'s precision/recall sweep is then redone for every resample at
once, with each image weighted by how often the resample drew it (a drawn-twice image counts
as two images, as if its detections and ground truth were listed twice).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

MAX_DETECTIONS = 100   # COCO's maxDets for the headline AP
# torchmetrics' thresholds, float32 like its linspace: an IoU of exactly 0.8 must match or miss
# here as it did in the reported mask AP
IOU_THRESHOLDS = np.array(torch.linspace(0.5, 0.95, 10).tolist())
RECALL_LEVELS = np.array(torch.linspace(0.0, 1.0, 101).tolist())
CHUNK = 1 << 20   # resamples × detections of one category scored at once


def run_lengths(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a bool mask (H, W)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *counts] if flat.size and flat[0] else counts


def image_record(prediction: dict[str, Any], truth: dict[str, Any], digits: int = 4
                 ) -> dict[str, Any]:
    """One test image: its size, ground-truth masks and scored detections (labels from 1)."""
    masks = truth["masks"]
    size = [int(s) for s in (masks.shape[1:] if len(masks) else prediction["masks"].shape[1:])]
    return {
        "size": size,
        "truth": [{"label": int(label), "counts": run_lengths(m.numpy())}
                  for label, m in zip(truth["labels"], masks)],
        "detections": [{"label": int(label), "score": round(float(score), digits),
                        "counts": run_lengths(m.numpy())}
                       for label, score, m in zip(prediction["labels"], prediction["scores"],
                                                  prediction["masks"])],
    }


@dataclass(frozen=True)
class Category:
    """One category's matches over all test images."""
    image: np.ndarray      # (D,) image of each detection, sorted by score (high first)
    tps: np.ndarray        # (T, D) matched and not ignored, per IoU threshold
    fps: np.ndarray        # (T, D) unmatched and not ignored
    truth: np.ndarray      # (N,) ground-truth instances (not ignored) per image

    @classmethod
    def ranked(cls, scores: np.ndarray, image: np.ndarray, tps: np.ndarray, fps: np.ndarray,
               truth: np.ndarray) -> Category:
        """The detections sorted by score as accumulate() sorts them (stable: ties keep their
        order)."""
        order = np.argsort(-scores, kind="mergesort")
        return cls(image[order].astype(int), tps[:, order], fps[:, order], truth)


class MaskAP:
    """COCO mask AP (IoU 0.50:0.95, all areas, 100 detections) of one model on N images."""

    def __init__(self, images: list[dict[str, Any]], labels: int) -> None:
        self.images = len(images)
        evaluation = _evaluate(images, labels)
        self.categories = [c for c in (_category(evaluation, k, self.images)
                                       for k in range(len(evaluation.params.catIds)))
                           if c is not None]

    @classmethod
    def from_categories(cls, images: int, categories: list[Category]) -> MaskAP:
        """Mask AP from matches decided elsewhere (simulated detections), scored by the same
        code as the matches pycocotools finds."""
        found = cls.__new__(cls)
        found.images, found.categories = images, categories
        return found

    def score(self, weights: np.ndarray) -> float:
        """Mask AP with image i counted weights[i] times (all ones: the reported mask AP)."""
        return float(self.scores(np.asarray(weights, float)[None])[0])

    def scores(self, weights: np.ndarray) -> np.ndarray:
        """(B,) score() of each row of weights (B, N), a few rows at a time: a resample's
        arrays are (rows, detections of a category)."""
        widest = max([1] + [c.tps.shape[1] for c in self.categories])
        rows = max(1, CHUNK // widest)
        return np.concatenate([self._scores(weights[i:i + rows])
                               for i in range(0, len(weights), rows)])

    def _scores(self, weights: np.ndarray) -> np.ndarray:
        """The mean over categories with ground truth in the row of their AP (nan: none)."""
        per_category = np.array([_average_precision(c, weights) for c in self.categories])
        if not len(per_category):
            return np.full(len(weights), np.nan)
        with warnings.catch_warnings():   # a row without ground truth in any category
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(per_category, axis=0)


def _average_precision(c: Category, weights: np.ndarray) -> np.ndarray:
    """(B,) AP of category c averaged over IoU thresholds, with image i counted weights[b, i]
    times in row b; nan where the row holds no ground truth. accumulate()'s interpolated
    precision at each recall level r is the highest precision at recall >= r; only matched
    detections need be looked at (an unmatched one has its predecessor's recall at lower
    precision), and an undrawn image's detections repeat their predecessor's point, so
    dropping them, as accumulate() does, changes no maximum."""
    truth = weights @ c.truth
    w = weights[:, c.image]
    ap = np.zeros(len(weights))
    for tps, fps in zip(c.tps, c.fps):
        hit, miss = np.flatnonzero(tps), np.flatnonzero(fps)
        if not len(hit):
            continue
        tp = np.cumsum(w[:, hit], axis=1)
        fp = np.hstack([np.zeros((len(w), 1)), np.cumsum(w[:, miss], axis=1)])[
            :, np.cumsum(fps)[hit]]     # the unmatched weight before each match
        with np.errstate(divide="ignore", invalid="ignore"):   # rows without ground truth
            recall = tp / truth[:, None]
        precision = tp / (fp + tp + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        # a match serves the recall levels between its predecessor's recall and its own
        reached = np.searchsorted(RECALL_LEVELS, recall, side="right")
        ap += (envelope * np.diff(reached, axis=1, prepend=0)).sum(axis=1)
    ap /= len(c.tps) * len(RECALL_LEVELS)
    ap[truth == 0] = np.nan
    return ap


def _evaluate(images: list[dict[str, Any]], labels: int) -> COCOeval:
    categories = [{"id": k} for k in range(1, labels + 1)]
    info = [{"id": i, "height": r["size"][0], "width": r["size"][1]}
            for i, r in enumerate(images)]
    truth, found = COCO(), COCO()
    truth.dataset = {"images": info, "categories": categories, "annotations": _annotations(
        images, "truth")}
    found.dataset = {"images": info, "categories": categories, "annotations": _annotations(
        images, "detections")}
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
        truth.createIndex()
        found.createIndex()
        evaluation = COCOeval(truth, found, iouType="segm")
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.params.maxDets = [MAX_DETECTIONS]
        evaluation.params.iouThrs, evaluation.params.recThrs = IOU_THRESHOLDS, RECALL_LEVELS
        evaluation.evaluate()
    return evaluation


def _annotations(images: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, record in enumerate(images):
        height, width = record["size"]
        for item in record[key]:
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": item["counts"]},
                                         height, width)
            out.append({"id": len(out) + 1, "image_id": i, "category_id": item["label"],
                        "segmentation": rle, "area": float(mask_utils.area(rle)),
                        "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0,
                        "score": item.get("score", 1.0)})
    return out


def _category(evaluation: COCOeval, k: int, images: int) -> Category | None:
    """The matches of category k over all images, sorted by score as accumulate() sorts them."""
    per_image = evaluation.evalImgs[k * images:(k + 1) * images]
    present = [(i, e) for i, e in enumerate(per_image) if e is not None]
    if not present:
        return None
    truth = np.zeros(images)
    for i, e in present:
        truth[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
    thresholds = len(evaluation.params.iouThrs)
    scores = np.concatenate([e["dtScores"][:MAX_DETECTIONS] for _, e in present])
    image = np.concatenate([np.full(len(e["dtScores"][:MAX_DETECTIONS]), i) for i, e in present])
    matched = np.concatenate([e["dtMatches"][:, :MAX_DETECTIONS] for _, e in present], axis=1)
    ignored = np.concatenate([e["dtIgnore"][:, :MAX_DETECTIONS] for _, e in present], axis=1)
    matched = matched.reshape(thresholds, -1)
    ignored = ignored.reshape(thresholds, -1).astype(bool)
    return Category.ranked(scores, image, (matched != 0) & ~ignored, (matched == 0) & ~ignored,
                           truth)
