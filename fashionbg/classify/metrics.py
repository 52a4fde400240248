"""Classification metrics from torchmetrics, keyed by class name for `dvc metrics diff`.

A class with no image in the split has no accuracy (None, not 0.0) and is left out of the
macro average, so a split that misses a class does not drag macro-F1 down.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor,
                           labels: list[str]) -> dict[str, Any]:
    """Top-1, top-5, macro-F1, loss and per-class accuracy (recall) on one split."""
    n = len(labels)
    per_class = multiclass_accuracy(logits, targets, num_classes=n, average=None)
    present = _present(targets, n)
    f1 = multiclass_f1_score(logits, targets, num_classes=n, average=None)
    return {
        "top1": _round(multiclass_accuracy(logits, targets, num_classes=n, average="micro")),
        "top5": _round(multiclass_accuracy(logits, targets, num_classes=n, average="micro",
                                           top_k=min(5, n))),
        "macro_f1": _round(f1[present].mean()),
        "loss": _round(F.cross_entropy(logits, targets)),
        "images": len(targets),
        "per_class_accuracy": {name: _round(v) if seen else None
                               for name, v, seen in zip(labels, per_class, present.tolist())},
    }


def absent_classes(targets: torch.Tensor, labels: list[str]) -> list[str]:
    """The classes no image of the split belongs to."""
    present = _present(targets, len(labels)).tolist()
    return [name for name, seen in zip(labels, present) if not seen]


def _present(targets: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(targets, minlength=n) > 0


def confusion_matrix(logits: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
    """Rows are true classes, columns predicted ones."""
    return multiclass_confusion_matrix(logits, targets, num_classes=n)


def _round(value: torch.Tensor) -> float:
    return round(float(value), 4)
