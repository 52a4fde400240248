"""What differs between the semantic and the instance task, behind one interface the stages use:
labels, datasets, loaders, model, loss step and evaluation."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashionbg.contracts.codes import IGNORE
from fashionbg.contracts.prepared import Prepared
from fashionbg.core.errors import UserError
from fashionbg.nn.augment import place_augmentation
from fashionbg.nn.data import IN_PROCESS, LoaderOptions, make_loader
from fashionbg.nn.engine import Step, Validate
from fashionbg.segment.data import (
    InstanceDataset,
    SemanticDataset,
    augment_pair,
    collate_instances,
    paired_transform,
)
from fashionbg.segment.engine import (
    evaluate_instances,
    evaluate_semantic,
    instance_step,
    semantic_step,
)
from fashionbg.segment.instances import instance_targets
from fashionbg.segment.models import build_instance, build_semantic
from fashionbg.segment.params import SegmentConfig


class SemanticTask:
    """Per-pixel classes of the prepared masks (class 0 = background)."""

    name = "semantic"
    key_metric = "miou"
    step: Step = staticmethod(semantic_step)

    def __init__(self, config: SegmentConfig, prepared: Prepared) -> None:
        if prepared.masks is None:
            raise UserError("segment.task = semantic needs semantic masks, and this data has "
                            "none (meta has_masks = false); use segment.task: instance")
        self.config, self.prepared, self.masks = config, prepared, prepared.masks
        self.class_names: list[str] = list(prepared.meta["mask_classes"])
        self.image_size: tuple[int, int] = tuple(prepared.images.shape[1:3])

    def rows(self, split: str) -> np.ndarray:
        """Rows of `split` with ground truth (a mask that is not IGNORE everywhere)."""
        rows = self.prepared.indices(split)
        return rows[[bool((np.asarray(self.masks[r]) != IGNORE).any()) for r in rows]]

    def dataset(self, images: np.ndarray, rows: np.ndarray, augment: str = "none") -> Dataset:
        return SemanticDataset(images, self.masks, rows, augment)

    def training(self, augment: str, on_device: bool) -> tuple[str, Step]:
        """(the training dataset's augmentation, the step the engine runs) for
        `train.augment_on`: on the device the step augments each batch, the dataset none."""
        transform = paired_transform(augment, self.image_size)
        pair = None if transform is None else partial(augment_pair, transform)
        in_loader, step = place_augmentation(pair, self.step, on_device)
        return (augment if in_loader is not None else "none"), step

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
               options: LoaderOptions = IN_PROCESS) -> DataLoader:
        return make_loader(dataset, batch_size, generator, options=options)

    def build_model(self, load_weights: bool) -> nn.Module:
        return build_semantic(self.config, len(self.class_names), load_weights)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 per_image: list | None = None) -> dict[str, Any]:
        return evaluate_semantic(model, loader, device, self.class_names, per_image)


class InstanceTask:
    """Garment instances for Mask R-CNN, from COCO annotations or mask components."""

    name = "instance"
    key_metric = "mask_ap"
    step: Step = staticmethod(instance_step)

    def __init__(self, config: SegmentConfig, prepared: Prepared, raw_dir: Path) -> None:
        self.config, self.prepared = config, prepared
        self.targets = instance_targets(prepared, raw_dir, config.instance_classes,
                                        config.min_instance_area)
        if not self.targets.class_names:
            raise UserError("segment.task = instance: the data has no object classes")
        self.class_names = ["background", *self.targets.class_names]
        self.image_size = tuple(prepared.images.shape[1:3])

    def rows(self, split: str) -> np.ndarray:
        """Rows of `split` the annotations cover."""
        rows = self.prepared.indices(split)
        return rows[[self.targets.has_truth(int(r)) for r in rows]]

    def dataset(self, images: np.ndarray, rows: np.ndarray, augment: str = "none") -> Dataset:
        return InstanceDataset(images, self.targets, rows, self.config.min_instance_area, augment)

    def training(self, augment: str, on_device: bool) -> tuple[str, Step]:
        """Augmentation stays in the loader whatever `train.augment_on` says: each image's
        instance masks and boxes vary in number, so the batch is a list, not a tensor."""
        return augment, self.step

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
               options: LoaderOptions = IN_PROCESS) -> DataLoader:
        return make_loader(dataset, batch_size, generator, collate_instances, options)

    def build_model(self, load_weights: bool) -> nn.Module:
        return build_instance(self.config, len(self.class_names), self.image_size, load_weights)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 per_image: list | None = None) -> dict[str, Any]:
        """`per_image` receives each image's detections and ground truth (mask AP does not
        split into per-image terms, but can be recomputed on any set of images)."""
        return evaluate_instances(model, loader, device, self.class_names[1:], per_image)


Task = SemanticTask | InstanceTask


# Each name of segment.task and its task: a name without an entry is a KeyError, never
# another task (a test keeps it equal to segment.params.TASKS).
TASKS: dict[str, Callable[[SegmentConfig, Prepared, Path], Task]] = {
    "semantic": lambda config, prepared, _: SemanticTask(config, prepared),
    "instance": InstanceTask,
}


def make_task(config: SegmentConfig, prepared: Prepared, raw_dir: Path) -> Task:
    return TASKS[config.task](config, prepared, raw_dir)


def validator(task: Task, loader: DataLoader, device: torch.device) -> Validate:
    """The task's key metric on the validation loader, for the curves and model selection."""
    def validate(model: nn.Module) -> dict[str, float | None]:
        return {task.key_metric: task.evaluate(model, loader, device)[task.key_metric]}

    return validate
