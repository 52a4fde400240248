"""Batches from the prepared uint8 cache, with the augmentation `classify.augment` names."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fashionbg.contracts.prepared import Prepared
from fashionbg.nn.data import IN_PROCESS, LoaderOptions, make_loader

Transform = Callable[[torch.Tensor], torch.Tensor]


def augmentation(name: str, size: tuple[int, int]) -> v2.Compose | None:
    """none; standard = random resized crop + flip; strong = standard + RandAugment. A v2
    Compose: the dataset calls it on an image; on the device nn.augment batches it."""
    if name == "none":
        return None
    aspect = size[1] / size[0]
    ops: list[Transform] = [
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(aspect * 0.85, aspect / 0.85),
                             antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if name == "strong":
        ops.append(v2.RandAugment())
    return v2.Compose(ops)


class ArrayDataset(Dataset):
    """(uint8 CHW image, label) pairs from rows `indices` of a prepared cache's images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 transform: Transform | None = None):
        self.images, self.labels = images, labels
        self.indices, self.transform = indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = int(self.indices[i])
        # copy: the memory-mapped cache is read-only
        image = torch.from_numpy(np.array(self.images[row])).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[row])


def split_loader(data: Prepared, split: str, batch_size: int, transform: Transform | None = None,
                 generator: torch.Generator | None = None, options: LoaderOptions = IN_PROCESS
                 ) -> DataLoader:
    """The images of one split; shuffled when a generator is given (training)."""
    return make_loader(ArrayDataset(data.images, data.labels, data.indices(split), transform),
                       batch_size, generator, options=options)
