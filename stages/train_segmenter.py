"""Stage `train_segmenter`: train a semantic (smp) or instance (Mask R-CNN) model on
data/prepared/${data.variant} and keep the epoch the model-selection rule picks
(models/segmenter.pt, dvclive curves)."""
from __future__ import annotations

import logging

import torch

from fashionbg.contracts.params import read_variant
from fashionbg.contracts.prepared import load_prepared
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.params import load_params
from fashionbg.nn.checkpoint import Checkpoint, save_checkpoint
from fashionbg.nn.distributed import main_live
from fashionbg.nn.engine import fit
from fashionbg.nn.launch import TrainingRun, run_training
from fashionbg.segment.params import SegmentConfig, read_segment
from fashionbg.segment.tasks import make_task, validator

log = logging.getLogger("train_segmenter")


@stage_main
def main() -> None:
    params = load_params()
    variant, config = read_variant(params), read_segment(params)
    run_training("stages.train_segmenter", params, config.device, "segment.device", config.seed,
                 lambda run: train(run, variant, config))


def train(run: TrainingRun, variant: str, config: SegmentConfig) -> None:
    prepared = load_prepared(paths.prepared(variant))
    task = make_task(config, prepared, paths.RAW)
    train_rows, val_rows = task.rows("train"), task.rows("val")
    if len(train_rows) < 2:
        raise UserError(f"{paths.prepared(variant)} has {len(train_rows)} training images; "
                        "segmentation needs at least 2")

    model = run.place(task.build_model(load_weights=True))
    loader_augment, step = task.training(config.augment, run.augment_on_device)
    train_loader = task.loader(task.dataset(prepared.images, train_rows, loader_augment),
                               run.batch_size(config.batch_size, "segment.batch_size"),
                               run.generator, run.loader)
    validate = (validator(task, task.loader(task.dataset(prepared.images, val_rows),
                                            config.batch_size, options=run.loader), run.device)
                if len(val_rows) and run.world.is_main else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.task_lr, weight_decay=config.weight_decay)
    log.info("%s task on %s (%d train, %d val images of %s) on %s, %d process(es); labels: %s",
             task.name, variant, len(train_rows), len(val_rows),
             "x".join(map(str, task.image_size)), run.device, run.world.size,
             ", ".join(task.class_names))
    with main_live(run.world, str(paths.live_dir("train_segmenter"))) as live:
        result = fit(model, train_loader, step, validate, task.key_metric, optimizer,
                     config.epochs, run.device, live, run.world, run.amp)
    if run.world.is_main:
        save_checkpoint(paths.SEGMENTER, Checkpoint(
            task=task.name, variant=variant, config=config.to_dict(), classes=task.class_names,
            image_size=list(task.image_size), epoch=result.best_epoch, model=result.state))
        log.info("kept epoch %d (val %s %s); wrote %s", result.best_epoch, task.key_metric,
                 result.best_score, paths.SEGMENTER)


if __name__ == "__main__":
    main()
