"""The rows of an overlay picture: each test image, its ground truth and the model's
prediction, painted in class colours (evaluation only; training draws nothing)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fashionbg.contracts.prepared import Prepared
from fashionbg.report.figures import save_figure
from fashionbg.report.headline import rounded
from fashionbg.segment.engine import predict_instances, predict_semantic
from fashionbg.segment.plots import class_colors, overlay_grid, paint_classes, paint_instances
from fashionbg.segment.tasks import InstanceTask, SemanticTask, Task

OverlayRow = tuple[np.ndarray, np.ndarray, np.ndarray]
SCORE_THRESHOLD = 0.5   # detections drawn


def save_overlays(task: Task, model: nn.Module, caches: dict[str, Prepared], rows: np.ndarray,
                  device: torch.device, amp: torch.dtype | None, folder: Path, trained: str,
                  scores: dict[str, dict[str, Any]]) -> None:
    """One overlay picture per test variant in `folder` (none when `rows` is empty), captioned
    with the model (`trained`: its name and training variant) and its key metric there; the
    model runs under autocast in `amp`, as it was scored."""
    folder.mkdir()
    if not len(rows):
        return
    key = task.spec.key_metric
    colors = class_colors(len(task.class_names))
    for tested_on, cache in caches.items():
        painted = overlay_rows(task, model, cache.images, rows, device, amp)
        save_figure(overlay_grid(painted, task.class_names, colors,
                                 f"{trained}, tested on {tested_on}"),
                    folder / f"{tested_on}.png",
                    f"{trained}: test {key} {rounded(scores[tested_on][key])} on {tested_on} "
                    "images")


def overlay_rows(task: Task, model: nn.Module, images: np.ndarray, rows: np.ndarray,
                 device: torch.device, amp: torch.dtype | None = None) -> list[OverlayRow]:
    if isinstance(task, SemanticTask):
        return _semantic_rows(task, model, images, rows, device, amp)
    return _instance_rows(task, model, images, rows, device, amp)


def _semantic_rows(task: SemanticTask, model: nn.Module, images: np.ndarray, rows: np.ndarray,
                   device: torch.device, amp: torch.dtype | None) -> list[OverlayRow]:
    colors = class_colors(len(task.class_names))
    batch = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2)
    predicted = predict_semantic(model, batch, device, amp).numpy()
    return [(images[r], paint_classes(images[r], np.asarray(task.masks[r]), colors),
             paint_classes(images[r], p, colors)) for r, p in zip(rows, predicted)]


def _instance_rows(task: InstanceTask, model: nn.Module, images: np.ndarray, rows: np.ndarray,
                   device: torch.device, amp: torch.dtype | None) -> list[OverlayRow]:
    colors = class_colors(len(task.class_names))
    batch = [torch.from_numpy(np.array(images[r])).permute(2, 0, 1) for r in rows]
    result = []
    for r, pred in zip(rows, predict_instances(model, batch, device, amp)):
        masks, labels = task.targets(int(r))
        # Ascending score, so the most confident detection is painted last, on top.
        keep = (pred["scores"] >= SCORE_THRESHOLD).nonzero().flatten().flip(0)
        result.append((images[r], paint_instances(images[r], masks, labels, colors),
                       paint_instances(images[r], pred["masks"][keep].numpy(),
                                       pred["labels"][keep].numpy(), colors)))
    return result
