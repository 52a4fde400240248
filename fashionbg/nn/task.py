"""One interface for every task the pipeline trains and evaluates (classification in
`classify.task`, semantic and instance segmentation in `segment.tasks`), and the model an
evaluation stage restores from its checkpoint. `nn.training` trains any of them, and the
study's pre-flight times each by its `rehearsal`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashionbg.contracts.prepared import Prepared
from fashionbg.contracts.tasks import TaskSpec
from fashionbg.core import paths
from fashionbg.core.errors import UserError
from fashionbg.nn.checkpoint import Checkpoint
from fashionbg.nn.data import IN_PROCESS, LoaderOptions
from fashionbg.nn.distributed import SINGLE, World
from fashionbg.nn.engine import Step, Validate


@dataclass(frozen=True)
class Rehearsal:
    """A task's training set up from a cell's params alone, without its data: what the
    pre-flight times (a few steps on a synthetic batch), so a new task is timed with no change
    to the study."""
    model: nn.Module                 # untrained: no weights are loaded
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]   # the task's, once on the device
    step: Step                       # the training step the engine runs (augmentation aside)
    device: torch.device             # the device the params ask for
    batch_size: int                  # the params' batch, over every training process
    # uint8 images (N, 3, H, W) on the device → (inputs, targets) as the task's loader gives
    # them to `step`; the model also takes `inputs` when it evaluates
    batch: Callable[[torch.Tensor], tuple[Any, Any]]


class Task(Protocol):
    spec: TaskSpec                 # names, key metric and files (contracts.tasks.TASKS)
    prepared: Prepared             # the variant it trains on: its rows and ground truth
    class_names: list[str]
    image_size: tuple[int, int]    # height, width
    min_train_images: int
    min_rank_batch: int            # images each training process needs per batch (batch norm)

    @property
    def model_name(self) -> str:
        """The model in words, for logs and captions."""

    def rows(self, split: str) -> np.ndarray:
        """The rows of `split` that have ground truth for this task."""

    def dataset(self, images: np.ndarray, rows: np.ndarray, augment: str = "none") -> Dataset:
        """`rows` of `images` (any variant's: rows and ground truth are the same) with their
        ground truth, augmented in the loader as `augment` names."""

    def training(self, augment: str, on_device: bool) -> tuple[str, Step]:
        """(the augmentation the training dataset applies, the step the engine runs) for
        `train.augment_on`: on the device the step augments each batch, the dataset none."""

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
               options: LoaderOptions = IN_PROCESS) -> DataLoader: ...

    def build_model(self, load_weights: bool) -> nn.Module: ...

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def validator(self, loader: DataLoader, device: torch.device, amp: torch.dtype | None,
                  world: World = SINGLE) -> Validate:
        """The validation metrics of the curves, in the training's autocast `amp`; the key
        metric selects the epoch kept. Under torchrun (`world`) `loader` holds this rank's
        shard of the split (distributed.shard), and every rank gets the whole split's metrics
        (a collective: every rank validates)."""

    @classmethod
    def rehearsal(cls, params: dict[str, Any]) -> Rehearsal:
        """Its model and training step as `params` (every section) set them up, with
        constant targets of the shape its loader gives."""


def restore_model(task: Task, checkpoint: Checkpoint, device: torch.device
                  ) -> tuple[nn.Module, np.ndarray]:
    """The checkpoint's model on `device` and the test rows it is scored on, refusing data whose
    classes changed since it was trained."""
    spec = task.spec
    if task.class_names != checkpoint.classes:
        raise UserError(f"the data's classes changed since {spec.checkpoint} was trained; "
                        f"run {spec.train_stage} again")
    rows = task.rows("test")
    if not len(rows):
        raise UserError(f"{paths.prepared(checkpoint.variant)} has no test images with "
                        "ground truth")
    model = checkpoint.load_into(task.build_model(load_weights=False))
    return model.to(device), rows
