"""What a training stage sets up before it builds anything, the same for every task: its place
in a torchrun job (or a single process), its device, seeds, loader options and memory format."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fashionbg.nn.data import LoaderOptions, training_options
from fashionbg.nn.device import resolve_device, seed_everything
from fashionbg.nn.distributed import World, per_rank_batch, process_group, world_from_env
from fashionbg.nn.engine import amp_dtype
from fashionbg.nn.params import read_train


@dataclass(frozen=True)
class TrainingRun:
    world: World
    device: torch.device
    loader: LoaderOptions
    memory_format: torch.memory_format
    generator: torch.Generator      # the training loader's shuffle (and its workers' seeds)
    augment_on_device: bool         # train.augment_on: device
    amp: torch.dtype | None         # train.precision on this device: autocast dtype, None = fp32

    def batch_size(self, batch_size: int, key: str) -> int:
        """This process's share of the task's batch size."""
        return per_rank_batch(batch_size, self.world, key)

    def place(self, model: nn.Module) -> nn.Module:
        return model.to(self.device, memory_format=self.memory_format)


@contextmanager
def training_run(params: dict[str, Any], device: str, device_key: str, seed: int
                 ) -> Iterator[TrainingRun]:
    """Validate the train: section, join the torchrun job if there is one, and seed every RNG
    (rank r with seed + r, so ranks augment differently; rank 0, like a single process, with
    `seed`)."""
    train = read_train(params)
    world = world_from_env()
    with process_group(world, resolve_device(device, device_key)) as rank_device:
        yield TrainingRun(world, rank_device,
                          training_options(train.workers, rank_device, world, seed),
                          train.memory_format, seed_everything(seed + world.rank),
                          train.augment_on == "device",
                          amp_dtype(rank_device, train.precision))
