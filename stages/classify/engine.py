"""One training epoch and batched prediction, with AMP on CUDA (after torchvision's references)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images_per_second: float


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device) -> EpochStats:
    model.train()
    criterion = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device):
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    elapsed = time.perf_counter() - start
    return EpochStats(total_loss / seen, correct / seen, seen / elapsed)


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets for every batch, on the CPU."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        with autocast(device):
            logits = model(images.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets)
    return torch.cat(all_logits), torch.cat(all_targets)
