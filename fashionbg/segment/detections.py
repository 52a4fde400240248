"""Per-image instance detections and ground truth, and mask AP recomputed from them on any
multiset of test images.

Masks travel as uncompressed COCO RLE (run lengths in column-major order, starting with a run
of zeros), which a reader can check with plain integer arithmetic before pycocotools' C code
sees them. Mask AP is pycocotools' COCOeval: `evaluate()` matches detections to ground truth
once per image; `accumulate()`'s precision/recall sweep is then redone for each resample with
each image weighted by how often the resample drew it (a drawn-twice image counts as two
images, as if its detections and ground truth were listed twice).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

MAX_DETECTIONS = 100   # COCO's maxDets for the headline AP


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
class _Category:
    image: np.ndarray      # (D,) image of each detection, sorted by score (high first)
    tps: np.ndarray        # (T, D) matched and not ignored, per IoU threshold
    fps: np.ndarray        # (T, D) unmatched and not ignored
    truth: np.ndarray      # (N,) ground-truth instances (not ignored) per image


class MaskAP:
    """COCO mask AP (IoU 0.50:0.95, all areas, 100 detections) of one model on N images."""

    def __init__(self, images: list[dict[str, Any]], labels: int) -> None:
        self.images = len(images)
        evaluation = _evaluate(images, labels)
        params = evaluation.params
        self.recall_levels = params.recThrs
        self.categories = [c for c in (_category(evaluation, k, self.images)
                                       for k in range(len(params.catIds))) if c is not None]

    def score(self, weights: np.ndarray) -> float:
        """Mask AP with image i counted weights[i] times (all ones: the reported mask AP)."""
        precision = [self._precision(c, weights) for c in self.categories]
        present = [p for p in precision if p is not None]
        return float(np.mean(present)) if present else float("nan")

    def _precision(self, c: _Category, weights: np.ndarray) -> np.ndarray | None:
        """(T, R) interpolated precision at COCO's recall levels; None without ground truth."""
        truth = float(weights @ c.truth)
        if truth == 0:
            return None
        w = weights[c.image]
        tp, fp = np.cumsum(c.tps * w, axis=1), np.cumsum(c.fps * w, axis=1)
        keep = w > 0
        tp, fp = tp[:, keep], fp[:, keep]
        if not tp.shape[1]:
            return np.zeros((len(c.tps), len(self.recall_levels)))
        recall = tp / truth
        precision = tp / (fp + tp + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        out = np.zeros((len(tp), len(self.recall_levels)))
        for t in range(len(tp)):
            at = np.searchsorted(recall[t], self.recall_levels, side="left")
            inside = at < tp.shape[1]
            out[t, inside] = envelope[t, at[inside]]
        return out


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
        # torchmetrics' thresholds, float32 like its linspace: an IoU of exactly 0.8 must match
        # or miss here as it did in the reported mask AP
        evaluation.params.iouThrs = np.array(torch.linspace(0.5, 0.95, 10).tolist())
        evaluation.params.recThrs = np.array(torch.linspace(0.0, 1.0, 101).tolist())
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


def _category(evaluation: COCOeval, k: int, images: int) -> _Category | None:
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
    order = np.argsort(-scores, kind="mergesort")
    matched = matched.reshape(thresholds, -1)[:, order]
    ignored = ignored.reshape(thresholds, -1)[:, order].astype(bool)
    return _Category(image[order].astype(int), (matched != 0) & ~ignored,
                     (matched == 0) & ~ignored, truth)
