"""Training and evaluation loops for both tasks (torchvision references style).

A "step" turns a batch into a scalar loss, so one `train_one_epoch` serves semantic models
(cross-entropy + Dice on logits) and Mask R-CNN (the sum of its own losses). On CUDA the
forward pass runs under autocast and the loss is scaled; on CPU both are no-ops.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..common.params import UserError
from ..datasets.prepared import IGNORE
from .metrics import ConfusionMatrix, instance_metric, summarize_instances

log = logging.getLogger(__name__)

Step = Callable[[nn.Module, Any, Any, torch.device], torch.Tensor]
_dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for per-pixel accuracy plus Dice, which keeps small garments from being
    swamped by background pixels. Pixels without ground truth (IGNORE) count for neither."""
    logits = logits.float()
    return F.cross_entropy(logits, target, ignore_index=IGNORE) + _dice(logits, target)


def semantic_step(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                  device: torch.device) -> torch.Tensor:
    return semantic_loss(model(images.to(device)), masks.to(device))


def instance_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict],
                  device: torch.device) -> torch.Tensor:
    losses = model([i.to(device) for i in images],
                   [{k: v.to(device) for k, v in t.items()} for t in targets])
    return sum(losses.values())


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, enabled=device.type == "cuda")


def train_one_epoch(model: nn.Module, loader: DataLoader, step: Step,
                    optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, device: torch.device, epoch: int
                    ) -> dict[str, float]:
    """One pass over `loader`; returns the mean loss and the training throughput."""
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    for images, targets in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None):
        with autocast(device):
            loss = step(model, images, targets, device)
        if not math.isfinite(loss.item()):
            raise UserError(f"training diverged at epoch {epoch} (loss {loss.item()}); "
                            "try a lower segment.lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.item() * len(images)
        seen += len(images)
    return {"loss": total / max(seen, 1), "images_per_s": seen / (time.perf_counter() - start)}


@torch.inference_mode()
def predict_semantic(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class-id maps (N, H, W) for float images (N, 3, H, W)."""
    model.eval()
    with autocast(device):
        return model(images.to(device)).argmax(1).cpu()


@torch.inference_mode()
def predict_instances(model: nn.Module, images: list[torch.Tensor], device: torch.device
                      ) -> list[dict[str, torch.Tensor]]:
    """Mask R-CNN detections with masks thresholded at 0.5, on the CPU."""
    model.eval()
    with autocast(device):
        outputs = model([i.to(device) for i in images])
    return [{"boxes": o["boxes"].float().cpu(), "scores": o["scores"].float().cpu(),
             "labels": o["labels"].cpu(), "masks": o["masks"][:, 0].cpu() > 0.5}
            for o in outputs]


def evaluate_semantic(model: nn.Module, loader: DataLoader, device: torch.device,
                      class_names: list[str]) -> dict[str, Any]:
    confusion = ConfusionMatrix(len(class_names))
    for images, masks in loader:
        confusion.update(masks, predict_semantic(model, images, device))
    return confusion.compute(class_names)


def evaluate_instances(model: nn.Module, loader: DataLoader, device: torch.device,
                       class_names: list[str]) -> dict[str, Any]:
    metric = instance_metric()
    for images, targets in loader:
        predictions = predict_instances(model, images, device)
        metric.update(predictions, [{"boxes": t["boxes"], "labels": t["labels"],
                                     "masks": t["masks"].bool()} for t in targets])
    return summarize_instances(metric, class_names)
