"""Running one training stage as several processes (DistributedDataParallel: NCCL on CUDA, gloo
on the CPU), or as one plain process, through the same calls.

The launcher (fashionbg.nn.launch, or torchrun) sets RANK, LOCAL_RANK and WORLD_SIZE; without
them (or with WORLD_SIZE 1) the stage runs single-process exactly as before. Each rank reads its
shard of the training split (DistributedSampler), training sums are added up across ranks, every
rank validates a disjoint shard of the validation split and the metric state is combined over
the ranks (so the model-selection rule sees the numbers one process would), and rank 0 alone
writes dvclive and saves the checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dvclive import Live
from fashionbg.core.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World(rank=0, size=1, local_rank=0)

# The job's own collectives keep the backend's timeout (None: NCCL's 10 minutes, gloo's 30),
# which still catches a real hang. Validation's collectives, and the wait for rank 0's logging,
# go through a separate gloo group: its tensors live in host memory (where the metrics keep
# their state, which NCCL cannot send), and its timeout allows a rank whose shard validates
# slowly (instance shards differ in detections), where NCCL would time out and abort.
COLLECTIVE_TIMEOUT: timedelta | None = None
HOST_TIMEOUT = timedelta(hours=6)
_host_group: list[Any] = []      # that gloo group, while a job runs

Sharded = TypeVar("Sharded", torch.Tensor, list)


def world_from_env() -> World:
    """The process's place in a launched job, or SINGLE when not run by a launcher."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ["LOCAL_RANK"]))


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[torch.device]:
    """Join the job's process group for the block (NCCL for CUDA, gloo for the CPU) and yield
    this rank's device (cuda:LOCAL_RANK on a GPU box)."""
    if not world.distributed:
        yield device
        return
    if device.type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise UserError(f"the launcher started local rank {world.local_rank} but this "
                            f"machine has {torch.cuda.device_count()} CUDA devices; lower "
                            "train.nproc")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                             device_id=device if device.type == "cuda" else None,
                             timeout=COLLECTIVE_TIMEOUT)
    _host_group.append(tdist.new_group(backend="gloo", timeout=HOST_TIMEOUT))
    yield device
    # Only after success: a failing rank is about to exit, and keeping its connections open
    # until then lets the launcher stop the peers before they fail on a closed connection.
    _host_group.clear()
    tdist.destroy_process_group()


def _host() -> Any:
    return _host_group[-1] if _host_group else None


def wait_for_main(world: World) -> None:
    """Every rank waits here until rank 0 has logged its epoch and kept its weights."""
    if world.distributed:
        tdist.barrier(group=_host())


def shard(rows: np.ndarray, world: World) -> np.ndarray:
    """This rank's part of the validation rows: every world.size-th row from its rank, so the
    shards are disjoint and cover the split (DistributedSampler would repeat rows to even them
    out, and the repeated images would count twice)."""
    return rows[world.rank::world.size]


def unshard(part: Sharded, world: World) -> Sharded:
    """Every rank's `part` (a tensor or list with one entry per row of its shard()), joined on
    every rank in the order of the rows before sharding. In host memory only (gloo)."""
    if not world.distributed:
        return part
    parts: list[Sharded] = [part] * world.size
    tdist.all_gather_object(parts, part, group=_host())
    total = sum(len(p) for p in parts)
    whole: Sharded
    if isinstance(part, torch.Tensor):      # shaped like rank 0's, whose shard is the longest
        whole = parts[0].new_empty((total, *parts[0].shape[1:]))
    else:
        whole = [None] * total
    for rank, rows in enumerate(parts):
        if len(rows):
            whole[rank::world.size] = rows       # rank r's shard held rows r, r + size, ...
    return whole


def host_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """`tensor`, a CPU tensor, summed over every rank in place."""
    if world.distributed:
        tdist.all_reduce(tensor, group=_host())
    return tensor


def agree(value: Any, world: World) -> Any:
    """Rank 0's `value` on every rank, so a decision taken from it is the same on all."""
    if not world.distributed:
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0, group=_host())
    return box[0]


def share_buffers(model: nn.Module, world: World) -> None:
    """Rank 0's buffers (batch norm's running statistics) on every rank. DDP broadcasts them
    before each training forward, but then each rank updates its own from its batch: after an
    epoch they differ, and every rank must validate the model rank 0 keeps."""
    if world.distributed:
        for buffer in model.buffers():
            tdist.broadcast(buffer, src=0)


def per_rank_batch(batch_size: int, world: World, key: str, min_images: int = 1) -> int:
    """Each rank's share of the batch, so the effective batch (and the schedule's steps per
    epoch) are those of one process; at least `min_images` (2 where batch norm normalises over
    the images of a rank's batch: one image crashes DeepLabV3+'s pooled branch)."""
    if batch_size % world.size:
        raise UserError(f"{key} = {batch_size} must be divisible by the number of training "
                        f"processes ({world.size}, train.nproc)")
    share = batch_size // world.size
    if share < min_images:
        raise UserError(f"{key} = {batch_size} gives each of the {world.size} training processes "
                        f"(train.nproc) {share} image(s) per batch, and this model's batch norm "
                        f"needs {min_images}: raise {key} to {min_images * world.size} or lower "
                        "train.nproc")
    return share


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module training steps call: DDP when distributed, the model itself otherwise."""
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sums over every rank."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(tensor)
    return tensor.tolist()


def main_live(world: World, directory: str) -> Any:
    """dvclive on rank 0; other ranks log nothing (None)."""
    if world.is_main:
        return Live(directory, dvcyaml=False, save_dvc_exp=False)
    return nullcontext(None)
