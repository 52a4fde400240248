"""Segmentation metrics.

Semantic: an accumulated confusion matrix (rows = ground truth, columns = prediction), as in
torchvision's references/segmentation. IoU of a class is TP / (TP + FP + FN); a class with no
ground-truth pixel in the split has no IoU (None, not 0.0) and is left out of the means.
`miou` averages over all classes including background, `miou_fg` over the others;
`fw_iou` weights each class's IoU by its share of ground-truth pixels.

Instance: COCO mask and box AP from torchmetrics' MeanAveragePrecision (pycocotools backend).
"""
from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

from fashionbg.nn.distributed import World, unshard


class ConfusionMatrix:
    """Accumulates pixels over images; with `keep_images`, also each image's own intersection,
    union and ground-truth pixels per class, so paired comparisons can resample test images."""

    def __init__(self, num_classes: int, keep_images: bool = False) -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64)
        # per image: (intersection, union, truth pixels) per class
        self.images: list[tuple[np.ndarray, ...]] | None = [] if keep_images else None

    def update(self, target: torch.Tensor, prediction: torch.Tensor) -> None:
        """Add a batch of class-id maps; target ids outside [0, num_classes) are ignored."""
        for t, p in zip(target, prediction):
            matrix = self._image_matrix(t, p)
            self.matrix += matrix
            if self.images is not None:
                hits, truth = matrix.diag(), matrix.sum(1)
                self.images.append((hits.numpy(), (matrix.sum(0) + truth - hits).numpy(),
                                    truth.numpy()))

    def _image_matrix(self, target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        n = self.num_classes
        target, prediction = target.flatten().long().cpu(), prediction.flatten().long().cpu()
        valid = (target >= 0) & (target < n)
        index = n * target[valid] + prediction[valid]
        return torch.bincount(index, minlength=n * n).reshape(n, n)

    def compute(self, class_names: list[str]) -> dict[str, Any]:
        m = self.matrix.double()
        true_positive = m.diag()
        gt_pixels, predicted = m.sum(1), m.sum(0)
        union = gt_pixels + predicted - true_positive
        iou = torch.where(gt_pixels > 0, true_positive / union.clamp(min=1), torch.nan)
        total = m.sum()
        present = ~iou.isnan()
        freq = gt_pixels / total.clamp(min=1)
        return {
            "miou": _mean(iou[present]),
            "miou_fg": _mean(iou[1:][present[1:]]),
            "pixel_acc": _num(true_positive.sum() / total) if total > 0 else None,
            "fw_iou": _num((freq[present] * iou[present]).sum()) if total > 0 else None,
            "per_class_iou": {name: _num(v) for name, v in zip(class_names, iou)},
        }


def _num(value: torch.Tensor) -> float | None:
    number = float(value)
    return None if math.isnan(number) else round(number, 6)


def _mean(values: torch.Tensor) -> float | None:
    return _num(values.mean()) if len(values) else None


def instance_metric(final: bool = True) -> MeanAveragePrecision:
    """Box and mask AP, with per-class AP for the evaluation stage (`final`) only: validation
    every epoch would rerun COCO's evaluation once per class. (Box AP stays in validation:
    torchmetrics scores masks alone as -1, not 0, while the model detects nothing.) Scores what
    this process saw, without torchmetrics' own sync, which pairs the ranks' images by position
    and so needs as many on every rank (DistributedSampler's padding, which would count the
    repeated images twice): under torchrun join_ranks gathers the shards instead."""
    return MeanAveragePrecision(iou_type=("bbox", "segm"), class_metrics=final,
                                backend="pycocotools", sync_on_compute=False)


def join_ranks(metric: MeanAveragePrecision, world: World) -> MeanAveragePrecision:
    """`metric` updated with this rank's shard of a split (distributed.shard), holding every
    rank's images in the split's order, on every rank: it scores as one process would."""
    for name, images in metric.metric_state.items():      # lists, one entry per image
        setattr(metric, name, unshard(cast(list, images), world))
    return metric


def _ap(result: dict[str, torch.Tensor], key: str) -> float | None:
    value = float(result[key])
    return None if value < 0 else round(value, 6)


def validation_mask_ap(metric: MeanAveragePrecision) -> float | None:
    """Mask AP of an instance_metric(final=False)."""
    return _ap(metric.compute(), "segm_map")


def summarize_instances(metric: MeanAveragePrecision, class_names: list[str]) -> dict[str, Any]:
    """COCO AP figures of an instance_metric(); -1 (torchmetrics' "no ground truth") becomes
    None."""
    result = metric.compute()

    def value(key: str) -> float | None:
        return _ap(result, key)

    per_class: dict[str, float | None] = {name: None for name in class_names}
    classes = result["classes"].flatten().tolist()
    for label, ap in zip(classes, result["segm_map_per_class"].flatten().tolist()):
        if 1 <= label <= len(class_names):
            per_class[class_names[label - 1]] = None if ap < 0 else round(ap, 6)
    return {
        "mask_ap": value("segm_map"), "mask_ap50": value("segm_map_50"),
        "mask_ap75": value("segm_map_75"),
        "box_ap": value("bbox_map"), "box_ap50": value("bbox_map_50"),
        "box_ap75": value("bbox_map_75"),
        "per_class_mask_ap": per_class,
    }
