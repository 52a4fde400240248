"""The `train:` and `evaluate:` sections of params.yaml: how training runs (processes, loading,
where augmentation runs, memory format) and how evaluation runs and what it draws, for every
task. Evaluation rebuilds each model from its checkpoint, so it reads no training keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fashionbg.core.params import (
    DEVICES,
    batch_size,
    boolean,
    choice,
    integer,
    optional_integer,
    section,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class EvaluateConfig:
    device: str
    batch_size: int
    overlays: int       # segmentation test images drawn per variant


KEYS = tuple(EvaluateConfig.__dataclass_fields__)


def read_evaluate(params: dict[str, Any]) -> EvaluateConfig:
    cfg = section(params, "evaluate", KEYS)
    return EvaluateConfig(
        device=choice(cfg, "evaluate", "device", DEVICES),
        batch_size=batch_size(cfg, "evaluate", "batch_size"),
        overlays=integer(cfg, "evaluate", "overlays", minimum=0, maximum=32),
    )


AUTO = "auto"
AUGMENT_ON = ("loader", "device")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Processes one machine runs: more than any GPU box holds, few enough that a typo (nproc: 1000)
# is refused instead of starting a thousand processes.
MAX_NPROC = 64
# DataLoader workers per training process: each holds a copy of the dataset object and a few
# prefetched batches, so a typo (workers: 640) is refused rather than exhausting memory.
MAX_WORKERS = 64


@dataclass(frozen=True)
class TrainConfig:
    nproc: int              # processes per machine; the stage starts that many (launch)
    workers: int | None     # DataLoader worker processes per training process; None = auto
    channels_last: bool     # channels-last memory format for the model's convolutions
    augment_on: str         # loader (DataLoader workers) | device (the batch, on the device)
    precision: str          # auto (GPU: bf16 if it has it, else fp16; CPU: fp32) | bf16 | fp16

    @property
    def memory_format(self) -> torch.memory_format:
        # imported here: stages read this module to check params before torch loads
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format


TRAIN_KEYS = tuple(TrainConfig.__dataclass_fields__)


def read_train(params: dict[str, Any]) -> TrainConfig:
    cfg = section(params, "train", TRAIN_KEYS)
    return TrainConfig(
        nproc=integer(cfg, "train", "nproc", minimum=1, maximum=MAX_NPROC),
        workers=optional_integer(cfg, "train", "workers", 0, AUTO, MAX_WORKERS,
                                 " (DataLoader processes per training process)"),
        channels_last=boolean(cfg, "train", "channels_last"),
        augment_on=choice(cfg, "train", "augment_on", AUGMENT_ON),
        precision=choice(cfg, "train", "precision", PRECISIONS),
    )
