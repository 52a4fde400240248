"""`train.augment_on: device`: augmentation applied to each training batch on the device instead
of in the DataLoader workers, which frees the CPU when it cannot keep a GPU fed.

torchvision's v2 transforms accept a whole batch but draw one set of parameters for it (one crop
and one flip for every image), so the transform is called once per sample: each image gets its
own crop, flip and RandAugment ops, drawn from the same distribution as in the loader. The
parameters come from torch's global generator (seeded by seed_everything), so runs repeat.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from fashionbg.nn.engine import Step

# (input, target) of one sample -> the augmented pair
SampleTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
T = TypeVar("T", bound=SampleTransform)


def augment_batch(transform: SampleTransform, inputs: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch with `transform` applied to every sample on its own (per-sample randomness)."""
    # channels-last, as the loader's images are (HWC in the cache): torch resizes such uint8
    # images on a fast path (half the time per 224x224 crop on the CPU)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    pairs = [transform(x, y) for x, y in zip(inputs, targets)]
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def augmented_step(step: Step, transform: SampleTransform) -> Step:
    """`step` preceded by the batch's augmentation on the training device."""
    def augmented(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=False):   # mixed precision is the model's only
            inputs, targets = augment_batch(transform, inputs, targets)
        return step(model, inputs, targets, device)

    return augmented


def place_augmentation(transform: T | None, step: Step, on_device: bool) -> tuple[T | None, Step]:
    """(the transform the loader applies, the step the engine runs) for `train.augment_on`."""
    if transform is None or not on_device:
        return transform, step
    return None, augmented_step(step, transform)


def place_named(augment: str, transform: T | None, step: Step, on_device: bool
                ) -> tuple[str, Step]:
    """place_augmentation for a dataset that builds `augment`'s transform itself: the name it
    keeps ("none" where the step augments on the device) and the step."""
    in_loader, step = place_augmentation(transform, step, on_device)
    return (augment if in_loader is not None else "none"), step
