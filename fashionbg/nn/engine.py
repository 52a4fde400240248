"""The one training engine both tasks use (after torchvision's references): an epoch loop with
mixed precision on CUDA, a non-finite-loss check and a progress bar; a warm-up + cosine
schedule; and `fit`, which applies the one model-selection rule, measures throughput and runs
the same loop under torchrun (DistributedDataParallel).

A task plugs in a *step* that turns a batch into a loss (plus counts to sum, e.g. correct
predictions) and a *validate* function that scores the model on the validation split.
"""
from __future__ import annotations

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

from fashionbg.core.errors import ParamError, UserError
from fashionbg.nn.distributed import (
    SINGLE,
    World,
    agree,
    all_sum,
    share_buffers,
    wait_for_main,
    wrap,
)
from fashionbg.nn.params import PRECISIONS

log = logging.getLogger(__name__)

# (model, inputs, targets, device) -> (mean loss of the batch, counts to sum over the epoch);
# counts are tensors on the device, summed there, so a step never waits for the GPU
Step = Callable[[nn.Module, Any, Any, torch.device],
                tuple[torch.Tensor, dict[str, torch.Tensor]]]
Validate = Callable[[nn.Module], dict[str, float | None]]


# Steps between the checks that the summed loss is finite: each check waits for the device.
CHECK_EVERY = 50
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively (CUDA compute capability 8.0 or later).
    torch's own check counts emulation as support by default, and emulated bf16 (V100, T4)
    is several times slower than fp16 there."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def choose_amp_dtype(precision: str, device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype for `train.precision` (None = float32, no autocast). `auto`: bf16
    where the card computes in it natively (no loss scaling needed), else fp16 (with loss
    scaling); float32 on the CPU. A forced bf16 or fp16 holds on any device (CPU autocast has
    both), except bf16 on a card without native bf16, which is a parameter error."""
    if precision not in PRECISIONS:
        raise ParamError("train.precision", precision, "one of " + ", ".join(PRECISIONS))
    if precision == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if bf16_supported else torch.float16
    if precision == "bf16" and device_type == "cuda" and not bf16_supported:
        raise ParamError("train.precision", precision,
                         "auto, fp16 or fp32: this GPU has no native bf16 support "
                         "(torch would emulate it, slower than fp16)")
    return DTYPES[precision]


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """choose_amp_dtype for this machine's `device`."""
    return choose_amp_dtype(precision, device.type, native_bf16(device))


def dtype_name(dtype: torch.dtype | None) -> str:
    """The precision a checkpoint records: bf16, fp16 or fp32 (no autocast)."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def evaluation_dtype(trained: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that scores a model trained in `trained` (dtype_name) on `device`:
    its training's on CUDA, so a model trained in float32 is scored in float32; float32 on the
    CPU, where mixed precision saves nothing; and float32 for a bf16 model on a card without
    native bf16 (fp16's range may overflow activations that bf16 kept)."""
    if device.type != "cuda" or (trained == "bf16" and not native_bf16(device)):
        return None
    return DTYPES[trained]


def autocast(device: torch.device, dtype: torch.dtype | str | None = "auto") -> torch.autocast:
    """Mixed precision in `dtype` (None: off), or by amp_dtype's auto choice by default."""
    if isinstance(dtype, str):
        dtype = amp_dtype(device, dtype)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | str | None = "auto"
                ) -> torch.amp.GradScaler:
    """Loss scaling, which only fp16 needs (bf16 has float32's range)."""
    if isinstance(dtype, str):
        dtype = amp_dtype(device, dtype)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run logs its precision, e.g. 'fp16 autocast with loss scaling'."""
    if dtype is None:
        return "fp32"
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return f"{name} autocast" + (" with loss scaling" if dtype == torch.float16 else "")


def memory_format_name(x: torch.Tensor) -> str:
    """The layout of a batch, as train.channels_last names them."""
    if x.is_contiguous():
        return "contiguous"
    return "channels_last" if x.is_contiguous(memory_format=torch.channels_last) else "strided"


def inputs_in(memory_format: torch.memory_format) -> Callable[[nn.Module, tuple], tuple | None]:
    """A forward pre-hook giving the model its image batch in `memory_format`, the layout of
    its weights: the loader collates contiguous batches (and device augmentation stacks
    channels-last ones), which each convolution would otherwise convert itself."""
    def convert(module: nn.Module, args: tuple) -> tuple | None:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            return (args[0].contiguous(memory_format=memory_format), *args[1:])
        return None

    return convert


def log_first_input(model: nn.Module, augmentation: str) -> None:
    """Say once, at the first batch, what the model really receives and where it was augmented:
    the line gpu_check reads to see that channels_last and train.augment_on took effect."""
    def first(module: nn.Module, args: tuple) -> None:
        handle.remove()
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            layout, where = memory_format_name(x), str(x.device)
        else:                           # Mask R-CNN takes a list of images
            layout, where = "list", str(x[0].device) if x else "nowhere"
        log.info("model input: %s on %s; augmentation %s", layout, where, augmentation)

    handle = model.register_forward_pre_hook(first)


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
                    scaler: torch.amp.GradScaler, device: torch.device, epoch: int,
                    amp: torch.dtype | str | None = "auto") -> EpochStats:
    """One pass over `loader` with autocast in `amp` (see `autocast`), stepping the schedule
    with every step the optimizer takes. `scaler` must be grad_scaler(device, amp): enabled for
    fp16 only.

    The loss and the step's counts are summed on the device and read once at the end (and the
    loss checked for divergence every CHECK_EVERY steps), so the host queues steps without
    waiting for the device; with fp16 the scaler itself still reads its inf check per step."""
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    sums: dict[str, torch.Tensor] = {}
    # GradScaler skips the optimizer's step on inf/nan gradients: the schedule follows the
    # steps taken, not the batches, without asking the scaler (get_scale waits for the device)
    follow = optimizer.register_step_post_hook(lambda *_: scheduler.step())
    start = time.perf_counter()
    try:
        for index, (inputs, targets) in enumerate(
                tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None), start=1):
            with autocast(device, amp):
                loss, counts = step(model, inputs, targets, device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)              # unscales first; skipped on inf/nan gradients
            scaler.update()
            total += loss.detach() * len(inputs)
            seen += len(inputs)
            for key, count in counts.items():
                sums[key] = sums.get(key, 0) + count.detach()
            if index % CHECK_EVERY == 0:
                check_finite(total, seen, epoch)
    finally:
        follow.remove()
    check_finite(total, seen, epoch)
    return EpochStats(float(total) / max(seen, 1), {k: float(v) for k, v in sums.items()},
                      seen, time.perf_counter() - start)


def check_finite(total: torch.Tensor, seen: int, epoch: int) -> None:
    """Stop a diverged run: a non-finite loss makes the summed loss non-finite for good."""
    if not torch.isfinite(total):
        raise UserError(f"training diverged at epoch {epoch} (loss {float(total) / max(seen, 1)}"
                        "); try a lower learning rate")


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


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights in host memory: the kept epoch costs no GPU memory, and
    the checkpoint it becomes loads on a machine without CUDA."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(model: nn.Module, loader: DataLoader, step: Step, validate: Validate | None, key: str,
        optimizer: torch.optim.Optimizer, epochs: int, device: torch.device, live: Any,
        world: World = SINGLE, amp: torch.dtype | str | None = "auto") -> FitResult:
    """Train for `epochs` and keep one epoch's weights by the model-selection rule shared by
    every task: the epoch with the best validation `key` (higher is better; the earliest on a
    tie); without validation images, the last epoch. The test split never takes part.

    Under torchrun every rank trains its shard through DistributedDataParallel and the epoch's
    sums are added up over the ranks. Every rank validates (each its shard: `validate` combines
    them into the whole split's figures, given rank 0's batch norm statistics) and takes rank
    0's figures, so all take the same decision; rank 0 alone logs to `live` and keeps weights,
    other ranks pass `live` None and get no state, and wait for it at the end of each epoch
    (wait_for_main), not inside the next collective.
    `amp` is the autocast dtype (TrainingRun.amp; None = float32); fp16 adds loss scaling.
    """
    if isinstance(amp, str):
        amp = amp_dtype(device, amp)
    trained = wrap(model, world, device)
    scheduler = warmup_cosine(optimizer, epochs * len(loader))
    scaler = grad_scaler(device, amp)
    if world.is_main:
        log.info("precision: %s on %s", precision_name(amp), device)
    best_epoch, best_score, best_state = 0, None, None
    stats: list[EpochStats] = []
    sampler = getattr(loader, "sampler", None)
    for epoch in range(1, epochs + 1):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)     # a new shuffle each epoch, the same on every rank
        epoch_stats = sum_over_ranks(train_one_epoch(trained, loader, step, optimizer,
                                                     scheduler, scaler, device, epoch, amp),
                                     world, device)
        stats.append(epoch_stats)
        started = time.perf_counter()
        val: dict[str, float | None] = {}
        if validate is not None:
            share_buffers(model, world)
            val = agree(validate(model), world)
        validation_seconds = time.perf_counter() - started
        score = val.get(key)
        if validate is None or (score is not None and (best_score is None or score > best_score)):
            best_epoch, best_score = epoch, score
            if world.is_main:
                best_state = cpu_state(model)
        if world.is_main:
            live.step = epoch   # the curves' x axis counts epochs from 1
            logged = {"train/loss": epoch_stats.loss,
                      **{f"train/{k}": v / max(epoch_stats.images, 1)
                         for k, v in epoch_stats.sums.items()},
                      **{f"val/{k}": v for k, v in val.items() if v is not None}}
            for name, value in logged.items():
                live.log_metric(name, round(float(value), 4))
            log.info("epoch %d/%d: %s | %.1f images/s | training %.1f s, validation %.1f s",
                     epoch, epochs, " ".join(f"{k} {v:.4f}" for k, v in logged.items()),
                     epoch_stats.images_per_second, epoch_stats.seconds, validation_seconds)
            live.next_step()
        wait_for_main(world)     # the other ranks wait here while rank 0 logs
    if best_epoch == 0:   # validation never produced a score: keep the last epoch
        best_epoch = epochs
        best_state = cpu_state(model) if world.is_main else None
    if not world.is_main:
        return FitResult(best_epoch, best_score, {}, steady_throughput(stats))
    assert best_state is not None       # rank 0 copied the kept epoch's weights
    result = FitResult(best_epoch, best_score, best_state, steady_throughput(stats))
    live.summary["best_epoch"] = best_epoch
    live.summary[f"best_val_{key}"] = None if best_score is None else round(best_score, 4)
    live.summary["train_images_per_second"] = round(result.images_per_second, 1)
    return result
