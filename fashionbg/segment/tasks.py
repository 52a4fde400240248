"""Semantic and instance segmentation behind the task interface the stages use
(`fashionbg.nn.task.Task`): labels, datasets, loaders, model, optimizer, loss step, evaluation
and what each writes per image."""
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
from fashionbg.contracts.tasks import TASKS as SPECS
from fashionbg.core.errors import UserError
from fashionbg.nn.augment import place_named
from fashionbg.nn.data import IN_PROCESS, LoaderOptions, make_loader
from fashionbg.nn.device import resolve_device
from fashionbg.nn.distributed import SINGLE, World
from fashionbg.nn.engine import Step, Validate
from fashionbg.nn.task import Rehearsal
from fashionbg.segment.data import (
    InstanceDataset,
    SemanticDataset,
    collate_instances,
    paired_transform,
)
from fashionbg.segment.engine import (
    evaluate_instances,
    evaluate_semantic,
    instance_step,
    semantic_step,
    validate_instances,
    validate_semantic,
)
from fashionbg.segment.instances import instance_targets
from fashionbg.segment.models import build_instance, build_semantic
from fashionbg.segment.params import SegmentConfig, read_segment

TIMED_CLASSES = 28   # a rehearsal's head, background included (the size barely shows in time)


class SemanticTask:
    """Per-pixel classes of the prepared masks (class 0 = background)."""

    spec = SPECS["semantic"]
    step: Step = staticmethod(semantic_step)
    min_train_images = 2
    # every model's batch norm pools over a rank's images somewhere (DeepLabV3+'s ASPP branch
    # has one value per channel and image): one image per process crashes it
    min_rank_batch = 2

    def __init__(self, config: SegmentConfig, prepared: Prepared, raw_dir: Path | None = None
                 ) -> None:
        """`raw_dir` is not read (the masks are in the prepared cache): every segmentation
        task is made the same way (TASKS)."""
        if prepared.masks is None:
            raise UserError("segment.task = semantic needs semantic masks, and this data has "
                            "none (meta has_masks = false); use segment.task: instance")
        self.config, self.prepared, self.masks = config, prepared, prepared.masks
        self.class_names: list[str] = list(prepared.meta["mask_classes"])
        height, width = prepared.images.shape[1:3]
        self.image_size = (height, width)

    @property
    def model_name(self) -> str:
        return f"{self.config.arch} on {self.config.encoder}"

    def rows(self, split: str) -> np.ndarray:
        """Rows of `split` with ground truth (a mask that is not IGNORE everywhere)."""
        rows = self.prepared.indices(split)
        return rows[[bool((np.asarray(self.masks[r]) != IGNORE).any()) for r in rows]]

    def dataset(self, images: np.ndarray, rows: np.ndarray, augment: str = "none") -> Dataset:
        return SemanticDataset(images, self.masks, rows, augment)

    def training(self, augment: str, on_device: bool) -> tuple[str, Step]:
        return place_named(augment, paired_transform(augment, self.image_size), self.step,
                           on_device, masks=True)

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
               options: LoaderOptions = IN_PROCESS) -> DataLoader:
        return make_loader(dataset, batch_size, generator, options=options)

    def build_model(self, load_weights: bool) -> nn.Module:
        return build_semantic(self.config, len(self.class_names), load_weights)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return segment_optimizer(self.config, model)

    def validator(self, loader: DataLoader, device: torch.device, amp: torch.dtype | None,
                  world: World = SINGLE) -> Validate:
        key, names = self.spec.key_metric, self.class_names
        return lambda model: {key: validate_semantic(model, loader, device, names, amp,
                                                     world)[key]}

    @classmethod
    def rehearsal(cls, params: dict[str, Any]) -> Rehearsal:
        config = read_segment(params)
        return _rehearsal(config, build_semantic(config, TIMED_CLASSES, load_weights=False),
                          cls.step, _background)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 per_image: list | None = None, amp: torch.dtype | None = None
                 ) -> dict[str, Any]:
        return evaluate_semantic(model, loader, device, self.class_names, per_image, amp)

    def keeps_per_image(self, own_images: bool) -> bool:
        """Whether the evaluation keeps per-image terms of these test images: the study
        resamples every test variant's intersections and unions."""
        return True

    def predictions(self, image_paths: list[str], tested_on: str, per_image: list
                    ) -> tuple[list[tuple], list[dict]]:
        """(rows of the per-image CSV: intersection, union and truth pixels per class present,
        detection records): the semantic task has no detections."""
        return [(path, tested_on, name, int(i), int(u), int(t))
                for path, terms in zip(image_paths, per_image)
                for name, i, u, t in zip(self.class_names, *terms) if u > 0], []


class InstanceTask:
    """Garment instances for Mask R-CNN, from COCO annotations or mask components."""

    spec = SPECS["instance"]
    step: Step = staticmethod(instance_step)
    min_train_images = 2
    min_rank_batch = 1     # its heads' batch norm normalises over the regions of the images

    def __init__(self, config: SegmentConfig, prepared: Prepared, raw_dir: Path) -> None:
        self.config, self.prepared = config, prepared
        self.targets = instance_targets(prepared, raw_dir, config.instance_classes,
                                        config.min_instance_area)
        if not self.targets.class_names:
            raise UserError("segment.task = instance: the data has no object classes")
        self.class_names = ["background", *self.targets.class_names]
        height, width = prepared.images.shape[1:3]
        self.image_size = (height, width)

    @property
    def model_name(self) -> str:
        return f"Mask R-CNN on {self.config.instance_backbone}"

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

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return segment_optimizer(self.config, model)

    def validator(self, loader: DataLoader, device: torch.device, amp: torch.dtype | None,
                  world: World = SINGLE) -> Validate:
        """Mask AP without per-class AP, so validating costs little per epoch."""
        key = self.spec.key_metric
        return lambda model: {key: validate_instances(model, loader, device, amp, world)}

    @classmethod
    def rehearsal(cls, params: dict[str, Any]) -> Rehearsal:
        config = read_segment(params)
        size = params["data"]["image_size"]
        model = build_instance(config, TIMED_CLASSES, (size[0], size[1]), load_weights=False)
        return _rehearsal(config, model, cls.step, _one_garment)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 per_image: list | None = None, amp: torch.dtype | None = None
                 ) -> dict[str, Any]:
        """`per_image` receives each image's detections and ground truth (mask AP does not
        split into per-image terms, but can be recomputed on any set of images)."""
        return evaluate_instances(model, loader, device, self.class_names[1:], per_image, amp)

    def keeps_per_image(self, own_images: bool) -> bool:
        """Detections of the model's own test images only: the study resamples those."""
        return own_images

    def predictions(self, image_paths: list[str], tested_on: str, per_image: list
                    ) -> tuple[list[tuple], list[dict]]:
        """(no per-image CSV rows, each image's detections and ground truth)."""
        return [], [{"path": path, **record} for path, record in zip(image_paths, per_image)]


Task = SemanticTask | InstanceTask


# Each name of segment.task and its task: a name without an entry is a KeyError, never
# another task (a test keeps it equal to segment.params.TASKS).
TASKS: dict[str, type[Task]] = {"semantic": SemanticTask, "instance": InstanceTask}


def make_task(config: SegmentConfig, prepared: Prepared, raw_dir: Path) -> Task:
    return TASKS[config.task](config, prepared, raw_dir)


def _rehearsal(config: SegmentConfig, model: nn.Module, step: Step,
               batch: Callable[[torch.Tensor], tuple[Any, Any]]) -> Rehearsal:
    return Rehearsal(model, partial(segment_optimizer, config), step,
                     resolve_device(config.device, "segment.device"), config.batch_size, batch)


def _background(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pixel of class 0."""
    n, _, h, w = images.shape
    return images, torch.zeros(n, h, w, dtype=torch.long, device=images.device)


def _one_garment(images: torch.Tensor) -> tuple[list[torch.Tensor], list[dict]]:
    """One instance per image: a box over the middle half of its width, three quarters of its
    height."""
    _, _, h, w = images.shape
    device = images.device
    mask = torch.zeros(1, h, w, dtype=torch.uint8, device=device)
    mask[:, h // 8:7 * h // 8, w // 4:3 * w // 4] = 1
    target = {"boxes": torch.tensor([[w / 4, h / 8, 3 * w / 4, 7 * h / 8]], device=device),
              "labels": torch.ones(1, dtype=torch.long, device=device), "masks": mask}
    return list(images), [target] * len(images)


def segment_optimizer(config: SegmentConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the parameters that take gradients."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=config.task_lr, weight_decay=config.weight_decay)
