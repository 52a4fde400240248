"""One interface for every task the pipeline trains and evaluates (classification in
`classify.task`, semantic and instance segmentation in `segment.tasks`), and the training they
share: each training stage is a few lines around `train_task`."""
from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashionbg.contracts.prepared import Prepared
from fashionbg.contracts.tasks import TaskSpec
from fashionbg.core import paths
from fashionbg.core.errors import UserError
from fashionbg.nn.checkpoint import Checkpoint, save_checkpoint
from fashionbg.nn.data import IN_PROCESS, LoaderOptions
from fashionbg.nn.distributed import main_live
from fashionbg.nn.engine import Step, Validate, fit
from fashionbg.nn.launch import TrainingRun

log = logging.getLogger("train")


class Task(Protocol):
    spec: TaskSpec                 # names, key metric and files (contracts.tasks.TASKS)
    prepared: Prepared             # the variant it trains on: its rows and ground truth
    class_names: list[str]
    image_size: tuple[int, int]    # height, width
    min_train_images: int

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

    def validator(self, loader: DataLoader, device: torch.device) -> Validate:
        """The validation metrics of the curves; the key metric selects the epoch kept."""


class TrainConfig(Protocol):
    """What `train_task` reads of a task's params section (read-only: the configs are frozen
    dataclasses)."""

    @property
    def augment(self) -> str: ...

    @property
    def epochs(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


def train_task(run: TrainingRun, task: Task, variant: str, config: TrainConfig) -> None:
    """Train `task` on `variant` and keep the epoch the model-selection rule picks (its
    checkpoint, dvclive curves)."""
    spec = task.spec
    train_rows, val_rows = task.rows("train"), task.rows("val")
    if len(train_rows) < task.min_train_images:
        raise UserError(f"{paths.prepared(variant)} has {len(train_rows)} training images; "
                        f"{spec.name} needs at least {task.min_train_images}")
    images = task.prepared.images
    model = run.place(task.build_model(load_weights=True))
    loader_augment, step = task.training(config.augment, run.augment_on_device)
    train_loader = task.loader(task.dataset(images, train_rows, loader_augment),
                               run.batch_size(config.batch_size, spec.batch_size_key),
                               run.generator, run.loader)
    validate = (task.validator(task.loader(task.dataset(images, val_rows), config.batch_size,
                                           options=run.loader), run.device)
                if len(val_rows) and run.world.is_main else None)
    log.info("%s: %s on %s (%d train, %d val images of %s) on %s, %d process(es); classes: %s",
             spec.name, task.model_name, variant, len(train_rows), len(val_rows),
             "x".join(map(str, task.image_size)), run.device, run.world.size,
             ", ".join(task.class_names))
    with main_live(run.world, str(paths.live_dir(spec.train_stage))) as live:
        result = fit(model, train_loader, step, validate, spec.key_metric, task.optimizer(model),
                     config.epochs, run.device, live, run.world, run.amp)
    if run.world.is_main:
        save_checkpoint(spec.checkpoint, Checkpoint(
            task=spec.name, variant=variant, config=config.to_dict(), classes=task.class_names,
            image_size=list(task.image_size), epoch=result.best_epoch, model=result.state))
        log.info("kept epoch %d (val %s %s); wrote %s", result.best_epoch, spec.key_metric,
                 result.best_score, spec.checkpoint)
