"""DataLoaders over the prepared cache, built the same way for every task."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
                collate: Callable | None = None, pin_memory: bool = False) -> DataLoader:
    """Shuffled by `generator` for training, in row order otherwise. A training loader drops
    the last partial batch when there is more than one, since a batch of one image breaks
    batch norm. In-process loading: the cache is memory-mapped uint8, nothing to decode."""
    shuffle = generator is not None
    return DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator,
                      drop_last=shuffle and len(dataset) > batch_size, collate_fn=collate,
                      pin_memory=pin_memory)
