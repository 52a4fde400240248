"""Datasets over the prepared arrays, with augmentation that moves image and masks together.

Images come out as uint8 tensors (the models normalise them); `standard` augmentation is a
horizontal flip, a random scale-crop (torchvision v2 resizes tv_tensors.Mask with nearest
neighbour, so class ids survive) and colour jitter, which v2 applies to the image only.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from fashionbg.segment.instances import InstanceTargets, boxes_from_masks


def paired_transform(augment: str, size: tuple[int, int]) -> v2.Transform | None:
    if augment == "none":
        return None
    height, width = size
    aspect = width / height
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(aspect * 0.8, aspect * 1.25)),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
    ])


def _image(images: np.ndarray, row: int) -> tv_tensors.Image:
    return tv_tensors.Image(torch.from_numpy(np.array(images[row])).permute(2, 0, 1))


def augment_pair(transform: v2.Transform, image: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One (CHW image, HW class-id mask) pair through `transform`, as plain tensors (the
    device's batched augmentation is nn.augment's)."""
    image, mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


class SemanticDataset(Dataset):
    """(image, class-id mask) pairs; `masks` is the ground truth whichever variant `images` is."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, rows: np.ndarray,
                 augment: str = "none") -> None:
        self.images, self.masks, self.rows = images, masks, rows
        self.transform = paired_transform(augment, images.shape[1:3])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[index])
        image = _image(self.images, row).as_subclass(torch.Tensor)
        mask = torch.from_numpy(np.array(self.masks[row]))
        if self.transform is not None:
            image, mask = augment_pair(self.transform, image, mask)
        return image, mask.long()


class InstanceDataset(Dataset):
    """(image, Mask R-CNN target) pairs; boxes are recomputed from the masks after augmentation
    and instances left smaller than `min_area` pixels are dropped."""

    def __init__(self, images: np.ndarray, targets: InstanceTargets, rows: np.ndarray,
                 min_area: int, augment: str = "none") -> None:
        self.images, self.targets, self.rows, self.min_area = images, targets, rows, min_area
        self.transform = paired_transform(augment, images.shape[1:3])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        row = int(self.rows[index])
        image = _image(self.images, row)
        masks_np, labels_np = self.targets(row)
        masks = tv_tensors.Mask(torch.from_numpy(masks_np.astype(np.uint8)))
        if self.transform is not None:
            image, masks = self.transform(image, masks)
        masks = masks.as_subclass(torch.Tensor).bool()
        keep = masks.flatten(1).sum(1) >= self.min_area
        masks, labels = masks[keep], torch.from_numpy(labels_np)[keep]
        target = {"boxes": boxes_from_masks(masks), "labels": labels,
                  "masks": masks.to(torch.uint8)}
        return image.as_subclass(torch.Tensor), target


def collate_instances(batch: list[tuple[torch.Tensor, dict[str, Any]]]
                      ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    images, targets = zip(*batch)
    return list(images), list(targets)
