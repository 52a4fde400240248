"""What classification plugs into the shared engine: the loss step, the optimizer, batched
prediction and validation."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from fashionbg.classify.metrics import classification_metrics
from fashionbg.classify.params import ClassifyConfig
from fashionbg.nn.distributed import SINGLE, World, unshard
from fashionbg.nn.engine import Validate, autocast


def classify_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                  device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of one batch, and how many it got right (for train/top1, on the device)."""
    targets = targets.to(device, non_blocking=True)
    logits = model(images.to(device, non_blocking=True))
    correct = (logits.argmax(1) == targets).sum()
    return F.cross_entropy(logits.float(), targets), {"top1": correct}


def make_optimizer(config: ClassifyConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9,
                               weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            amp: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets for every batch, on the CPU; the model runs under autocast
    in `amp` (None: float32). A loader without images (a rank's empty validation shard) gives
    empty tensors."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        with autocast(device, amp):
            logits = model(images.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets)
    if not all_logits:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.cat(all_logits), torch.cat(all_targets)


def validator(loader: DataLoader, device: torch.device, labels: list[str],
              amp: torch.dtype | None, world: World = SINGLE) -> Validate:
    """Validation loss and top-1 in the training's autocast `amp`, for the training curves and
    model selection. Under torchrun `loader` holds this rank's shard (distributed.shard) and
    every rank's logits are joined first, so the figures are the whole split's."""
    def validate(model: nn.Module) -> dict[str, float | None]:
        logits, targets = predict(model, loader, device, amp)
        metrics = classification_metrics(unshard(logits, world), unshard(targets, world), labels)
        return {"loss": metrics["loss"], "top1": metrics["top1"]}

    return validate
