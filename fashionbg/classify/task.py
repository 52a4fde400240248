"""Classification behind the task interface the stages use (`fashionbg.nn.task.Task`): the
prepared cache's labels, its datasets and loaders, the model, optimizer and validation."""
from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fashionbg.classify.data import ArrayDataset, augmentation
from fashionbg.classify.engine import classify_step, make_optimizer, validator
from fashionbg.classify.models import build_classifier
from fashionbg.classify.params import ClassifyConfig, read_classify
from fashionbg.contracts.prepared import Prepared
from fashionbg.contracts.tasks import TASKS
from fashionbg.core.errors import UserError
from fashionbg.nn.augment import place_named
from fashionbg.nn.data import IN_PROCESS, LoaderOptions, make_loader
from fashionbg.nn.device import resolve_device
from fashionbg.nn.distributed import SINGLE, World
from fashionbg.nn.engine import Step, Validate
from fashionbg.nn.task import Rehearsal

TIMED_CLASSES = 14   # a rehearsal's head: FashionStyle14's styles (the size barely shows in time)


class ClassifyTask:
    """One style label per photo."""

    spec = TASKS["classify"]
    min_train_images = 1
    min_rank_batch = 1

    def __init__(self, config: ClassifyConfig, prepared: Prepared) -> None:
        labels = prepared.meta["labels"]
        if not labels or (prepared.labels[prepared.indices("train")] < 0).any():
            raise UserError("this data source has no classification labels; choose a source "
                            "with a classification task (e.g. demo, fashionstyle14)")
        self.config, self.prepared = config, prepared
        self.class_names: list[str] = list(labels)
        height, width = prepared.meta["image_size"]
        self.image_size = (height, width)

    @property
    def model_name(self) -> str:
        return self.config.arch

    def rows(self, split: str) -> np.ndarray:
        return self.prepared.indices(split)

    def dataset(self, images: np.ndarray, rows: np.ndarray, augment: str = "none") -> Dataset:
        return ArrayDataset(images, self.prepared.labels, rows,
                            augmentation(augment, self.image_size))

    def training(self, augment: str, on_device: bool) -> tuple[str, Step]:
        return place_named(augment, augmentation(augment, self.image_size), classify_step,
                           on_device)

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator | None = None,
               options: LoaderOptions = IN_PROCESS) -> DataLoader:
        return make_loader(dataset, batch_size, generator, options=options)

    def build_model(self, load_weights: bool) -> nn.Module:
        return build_classifier(self.config, len(self.class_names), load_weights)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(self.config, model)

    def validator(self, loader: DataLoader, device: torch.device, amp: torch.dtype | None,
                  world: World = SINGLE) -> Validate:
        return validator(loader, device, self.class_names, amp, world)

    @classmethod
    def rehearsal(cls, params: dict[str, Any]) -> Rehearsal:
        config = read_classify(params)
        return Rehearsal(build_classifier(config, TIMED_CLASSES, load_weights=False),
                         partial(make_optimizer, config), classify_step,
                         resolve_device(config.device, "classify.device"), config.batch_size,
                         _first_class)

    def predictions(self, image_paths: list[str], tested_on: str, targets: torch.Tensor,
                    logits: torch.Tensor) -> list[tuple]:
        """Rows of the per-image CSV: path, test variant, true and predicted label, correct."""
        names = self.class_names
        return [(path, tested_on, names[t], names[p], int(t == p))
                for path, t, p in zip(image_paths, targets.tolist(), logits.argmax(1).tolist())]


def _first_class(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images, torch.zeros(len(images), dtype=torch.long, device=images.device)
