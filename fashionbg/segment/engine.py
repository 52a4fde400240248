"""What segmentation plugs into the shared engine: a loss step per task (cross-entropy + Dice
on logits for semantic models, the sum of its own losses for Mask R-CNN), prediction and
evaluation on a loader."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision

from fashionbg.contracts.codes import IGNORE
from fashionbg.nn.distributed import SINGLE, World, host_sum
from fashionbg.nn.engine import autocast
from fashionbg.segment.detections import image_record
from fashionbg.segment.metrics import (
    ConfusionMatrix,
    instance_metric,
    join_ranks,
    summarize_instances,
    validation_mask_ap,
)

_dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for per-pixel accuracy plus Dice, which keeps small garments from being
    swamped by background pixels. Pixels without ground truth (IGNORE) count for neither."""
    logits = logits.float()
    return F.cross_entropy(logits, target, ignore_index=IGNORE) + _dice(logits, target)


def semantic_step(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                  device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return semantic_loss(model(images.to(device)), masks.to(device)), {}


def instance_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict],
                  device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    losses = model([i.to(device) for i in images],
                   [{k: v.to(device) for k, v in t.items()} for t in targets])
    return sum(losses.values()), {}


@torch.inference_mode()
def predict_semantic(model: nn.Module, images: torch.Tensor, device: torch.device,
                     amp: torch.dtype | None = None) -> torch.Tensor:
    """Class-id maps (N, H, W) for uint8 images (N, 3, H, W), under autocast in `amp`."""
    model.eval()
    with autocast(device, amp):
        return model(images.to(device)).argmax(1).cpu()


@torch.inference_mode()
def predict_instances(model: nn.Module, images: list[torch.Tensor], device: torch.device,
                      amp: torch.dtype | None = None) -> list[dict[str, torch.Tensor]]:
    """Mask R-CNN detections with masks thresholded at 0.5, on the CPU; the model runs under
    autocast in `amp`. Masks are thresholded on the device: a bool mask is a quarter of the
    float one to copy to the host."""
    model.eval()
    with autocast(device, amp):
        outputs = model([i.to(device) for i in images])
    return [{"boxes": o["boxes"].float().cpu(), "scores": o["scores"].float().cpu(),
             "labels": o["labels"].cpu(), "masks": (o["masks"][:, 0] > 0.5).cpu()}
            for o in outputs]


def evaluate_semantic(model: nn.Module, loader: DataLoader, device: torch.device,
                      class_names: list[str], per_image: list | None = None,
                      amp: torch.dtype | None = None) -> dict[str, Any]:
    """Metrics over the loader; `per_image` (a list) receives each image's (intersection,
    union) per class, in loader order."""
    confusion = confusion_over(model, loader, device, len(class_names), amp,
                               keep_images=per_image is not None)
    if per_image is not None:
        assert confusion.images is not None  # kept: keep_images is set when per_image is given
        per_image.extend(confusion.images)
    return confusion.compute(class_names)


def validate_semantic(model: nn.Module, loader: DataLoader, device: torch.device,
                      class_names: list[str], amp: torch.dtype | None, world: World = SINGLE
                      ) -> dict[str, Any]:
    """evaluate_semantic's metrics of the whole validation split, of which `loader` holds this
    rank's shard under torchrun: the confusion matrices (pixel counts) add up exactly."""
    confusion = confusion_over(model, loader, device, len(class_names), amp)
    host_sum(confusion.matrix, world)
    return confusion.compute(class_names)


def confusion_over(model: nn.Module, loader: DataLoader, device: torch.device,
                   num_classes: int, amp: torch.dtype | None, keep_images: bool = False
                   ) -> ConfusionMatrix:
    confusion = ConfusionMatrix(num_classes, keep_images)
    for images, masks in loader:
        confusion.update(masks, predict_semantic(model, images, device, amp))
    return confusion


def evaluate_instances(model: nn.Module, loader: DataLoader, device: torch.device,
                       class_names: list[str], per_image: list | None = None,
                       amp: torch.dtype | None = None) -> dict[str, Any]:
    """COCO AP over the loader; `per_image` (a list) receives each image's detections and
    ground truth as RLE (bounded memory), in loader order, so mask AP can be recomputed on
    resampled images."""
    metric = score_instances(model, loader, device, amp, instance_metric(), per_image)
    return summarize_instances(metric, class_names)


def validate_instances(model: nn.Module, loader: DataLoader, device: torch.device,
                       amp: torch.dtype | None, world: World = SINGLE) -> float | None:
    """Mask AP at validation's cost (instance_metric(final=False)) of the whole validation
    split, of which `loader` holds this rank's shard under torchrun."""
    return validation_mask_ap(join_ranks(score_instances(model, loader, device, amp,
                                                         instance_metric(final=False)), world))


def score_instances(model: nn.Module, loader: DataLoader, device: torch.device,
                    amp: torch.dtype | None, metric: MeanAveragePrecision,
                    per_image: list | None = None) -> MeanAveragePrecision:
    """`metric` updated with the model's detections on every batch of the loader."""
    for images, targets in loader:
        predictions = predict_instances(model, images, device, amp)
        truth = [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"].bool()}
                 for t in targets]
        metric.update(predictions, truth)
        if per_image is not None:
            per_image.extend(map(image_record, predictions, truth))
    return metric
