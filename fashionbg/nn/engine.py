"""The one training engine both tasks use (after torchvision's references): an epoch loop with
mixed precision on CUDA, a non-finite-loss check and a progress bar; a warm-up + cosine
schedule; and `fit`, which applies the one model-selection rule, measures throughput and runs
the same loop under torchrun (DistributedDataParallel).

A task plugs in a *step* that turns a batch into a loss (plus counts to sum, e.g. correct
predictions) and a *validate* function that scores the model on the validation split.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from fashionbg.core.errors import UserError
from fashionbg.nn.distributed import SINGLE, World, all_sum, wrap

log = logging.getLogger(__name__)

# (model, inputs, targets, device) -> (mean loss of the batch, counts to sum over the epoch)
Step = Callable[[nn.Module, Any, Any, torch.device], tuple[torch.Tensor, dict[str, float]]]
Validate = Callable[[nn.Module], dict[str, float | None]]


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the card supports it (no loss scaling needed), else fp16; None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> torch.autocast:
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, which only fp16 needs."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first tenth (at most 100 steps), then cosine decay to zero;
    from-scratch Mask R-CNN is unstable without the warm-up."""
    warmup = max(1, min(100, total_steps // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EpochStats:
    loss: float
    sums: dict[str, float]      # the step's counts, summed
    images: int
    seconds: float              # training loop only: loading, forward, backward, update

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(model: nn.Module, loader: DataLoader, step: Step,
                    optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, device: torch.device, epoch: int
                    ) -> EpochStats:
    """One pass over `loader`, stepping the schedule once per batch."""
    model.train()
    total, seen, sums = 0.0, 0, {}
    start = time.perf_counter()
    for inputs, targets in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None):
        with autocast(device):
            loss, counts = step(model, inputs, targets, device)
        value = loss.item()
        if not math.isfinite(value):
            raise UserError(f"training diverged at epoch {epoch} (loss {value}); "
                            "try a lower learning rate")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += value * len(inputs)
        seen += len(inputs)
        for key, count in counts.items():
            sums[key] = sums.get(key, 0.0) + count
    return EpochStats(total / max(seen, 1), sums, seen, time.perf_counter() - start)


@dataclass
class FitResult:
    best_epoch: int
    best_score: float | None
    state: dict[str, torch.Tensor]             # the weights of the kept epoch
    images_per_second: float


def sum_over_ranks(stats: EpochStats, world: World, device: torch.device) -> EpochStats:
    """One epoch's figures over every rank: summed loss, counts and images; mean seconds."""
    if not world.distributed:
        return stats
    keys = sorted(stats.sums)
    loss, images, seconds, *sums = all_sum(
        [stats.loss * stats.images, stats.images, stats.seconds,
         *(stats.sums[k] for k in keys)], world, device)
    return EpochStats(loss / max(images, 1), dict(zip(keys, sums)), int(images),
                      seconds / world.size)


def steady_throughput(epochs: list[EpochStats]) -> float:
    """Training images per second over every epoch but the first, which pays one-off
    warm-up costs (allocations, kernel selection, page-ins of the cache)."""
    steady = epochs[1:] or epochs
    seconds = sum(e.seconds for e in steady)
    return sum(e.images for e in steady) / seconds if seconds > 0 else 0.0


def fit(model: nn.Module, loader: DataLoader, step: Step, validate: Validate | None, key: str,
        optimizer: torch.optim.Optimizer, epochs: int, device: torch.device, live: Any,
        world: World = SINGLE) -> FitResult:
    """Train for `epochs` and keep one epoch's weights by the model-selection rule shared by
    every task: the epoch with the best validation `key` (higher is better; the earliest on a
    tie); without validation images, the last epoch. The test split never takes part.

    Under torchrun every rank trains its shard through DistributedDataParallel and the epoch's
    sums are added up over the ranks; rank 0 alone validates (on the whole split, as in one
    process), logs to `live` and keeps weights; other ranks pass `live` None and get no state.
    """
    trained = wrap(model, world, device)
    scheduler = warmup_cosine(optimizer, epochs * len(loader))
    scaler = grad_scaler(device)
    best_epoch, best_score, best_state = 0, None, None
    stats: list[EpochStats] = []
    sampler = getattr(loader, "sampler", None)
    for epoch in range(1, epochs + 1):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)     # a new shuffle each epoch, the same on every rank
        epoch_stats = sum_over_ranks(train_one_epoch(trained, loader, step, optimizer,
                                                     scheduler, scaler, device, epoch),
                                     world, device)
        stats.append(epoch_stats)
        if not world.is_main:
            continue
        live.step = epoch   # the curves' x axis counts epochs from 1
        logged = {"train/loss": epoch_stats.loss,
                  **{f"train/{k}": v / max(epoch_stats.images, 1)
                     for k, v in epoch_stats.sums.items()}}
        val = validate(model) if validate is not None else {}
        logged.update({f"val/{k}": v for k, v in val.items() if v is not None})
        for name, value in logged.items():
            live.log_metric(name, round(float(value), 4))
        score = val.get(key)
        if validate is None or (score is not None and (best_score is None or score > best_score)):
            best_epoch, best_score = epoch, score
            best_state = copy.deepcopy(model.state_dict())
        log.info("epoch %d/%d: %s | %.1f images/s", epoch, epochs,
                 " ".join(f"{k} {v:.4f}" for k, v in logged.items()),
                 epoch_stats.images_per_second)
        live.next_step()
    if not world.is_main:
        return FitResult(0, None, {}, steady_throughput(stats))
    if best_state is None:   # validation never produced a score: keep the last epoch
        best_epoch, best_state = epochs, copy.deepcopy(model.state_dict())
    result = FitResult(best_epoch, best_score, best_state, steady_throughput(stats))
    live.summary["best_epoch"] = best_epoch
    live.summary[f"best_val_{key}"] = None if best_score is None else round(best_score, 4)
    live.summary["train_images_per_second"] = round(result.images_per_second, 1)
    return result
