"""DataLoaders over the prepared cache, built the same way for every task."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sized
from dataclasses import dataclass, replace
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fashionbg.nn.distributed import SINGLE, World

MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class LoaderOptions:
    """How batches are loaded: worker processes, pinned memory, and (under torchrun) which
    shard of a shuffled training set this rank reads."""
    workers: int
    pin_memory: bool
    world: World
    shard_seed: int         # the shuffling seed every rank shares (DistributedSampler)
    persistent: bool = True     # workers live from one epoch to the next


def validation_options(training: LoaderOptions) -> LoaderOptions:
    """The validation loader's: workers only while it validates, so a rank does not keep a
    second set alive (with their prefetched batches) beside the training loader's."""
    return replace(training, persistent=False)


IN_PROCESS = LoaderOptions(workers=0, pin_memory=False, world=SINGLE, shard_seed=0)


def auto_workers(device: torch.device, world: World) -> int:
    """`train.workers: auto`: none on the CPU, where the model needs every core and the uint8
    cache needs no decoding (so in-process loading costs little); on CUDA one less than this
    rank's share of the cores, at most MAX_AUTO_WORKERS, so augmentation overlaps the GPU."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) // world.size
    return max(1, min(MAX_AUTO_WORKERS, cores - 1))


def training_options(workers: int | None, device: torch.device, world: World, seed: int
                     ) -> LoaderOptions:
    """Loader options for a training stage; `workers` None means auto."""
    return LoaderOptions(workers=auto_workers(device, world) if workers is None else workers,
                         pin_memory=device.type == "cuda", world=world, shard_seed=seed)


def make_loader(dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
                collate: Callable | None = None, options: LoaderOptions = IN_PROCESS
                ) -> DataLoader:
    """Shuffled by `generator` for training, in row order otherwise. A training loader drops
    the last partial batch when there is more than one, since a batch of one image breaks
    batch norm. Under torchrun a training loader reads this rank's shard (the same shuffle on
    every rank, reseeded each epoch by the engine). Workers are forked where possible, so they
    share the memory-mapped cache instead of receiving a pickled copy of it; their random
    generators derive from `generator`, so a run is repeatable for a given worker count."""
    training = generator is not None
    sampler: DistributedSampler | None = None
    if training and options.world.distributed:
        sampler = DistributedSampler(dataset, options.world.size, options.world.rank,
                                     shuffle=True, seed=options.shard_seed, drop_last=True)
    # torch's Dataset declares no __len__; every dataset here is map-style, with one
    rows = len(sampler) if sampler is not None else len(cast(Sized, dataset))
    workers = options.workers
    return DataLoader(dataset, batch_size, shuffle=training and sampler is None,
                      sampler=sampler, generator=generator,
                      drop_last=training and rows > batch_size, collate_fn=collate,
                      num_workers=workers, pin_memory=options.pin_memory,
                      persistent_workers=workers > 0 and options.persistent,
                      multiprocessing_context="fork" if workers and sys.platform == "linux"
                      else None)
