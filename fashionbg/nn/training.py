"""The training every task shares: each training stage is a few lines around `train_task`."""
from __future__ import annotations

import logging
from typing import Any, Protocol

from fashionbg.core import paths
from fashionbg.core.errors import UserError
from fashionbg.nn.checkpoint import Checkpoint, save_checkpoint
from fashionbg.nn.data import validation_options
from fashionbg.nn.distributed import main_live, shard
from fashionbg.nn.engine import dtype_name, fit, log_first_input
from fashionbg.nn.launch import TrainingRun
from fashionbg.nn.task import Task

log = logging.getLogger("train")


class TrainConfig(Protocol):
    """What `train_task` reads of a task's params section (frozen dataclasses, so read-only)."""

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
    if run.world.is_main:
        log_first_input(model, "none" if config.augment == "none" else
                        f"{config.augment} in the loader" if loader_augment != "none" else
                        f"{config.augment} on {run.device}")
    train_loader = task.loader(task.dataset(images, train_rows, loader_augment),
                               run.batch_size(config.batch_size, spec.batch_size_key,
                                              task.min_rank_batch),
                               run.generator, run.loader)
    # every rank validates its shard: the validator combines them into the split's figures
    validate = (task.validator(task.loader(task.dataset(images, shard(val_rows, run.world)),
                                           config.batch_size,
                                           options=validation_options(run.loader)),
                                run.device, run.amp, run.world)
                if len(val_rows) else None)
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
            image_size=list(task.image_size), epoch=result.best_epoch,
            precision=dtype_name(run.amp), model=result.state))
        log.info("kept epoch %d (val %s %s); wrote %s", result.best_epoch, spec.key_metric,
                 result.best_score, spec.checkpoint)
