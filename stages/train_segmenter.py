"""Stage `train_segmenter`: train a semantic (smp) or instance (Mask R-CNN) model on
data/prepared/${data.variant}; write models/segmenter.pt and dvclive curves."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from dvclive import Live

from .common.params import UserError, load_params, stage_main
from .common.runtime import resolve_device, seed_everything
from .datasets.prepared import load_prepared
from .segment.engine import train_one_epoch
from .segment.params import read_config
from .segment.tasks import make_task, save_checkpoint, warmup_cosine

PREPARED_DIR = Path("data/prepared")
RAW_DIR = Path("data/raw")
MODEL_PATH = Path("models/segmenter.pt")
LIVE_DIR = Path("dvclive/train_segmenter")
log = logging.getLogger("train_segmenter")


@stage_main
def main() -> None:
    variant, config = read_config(load_params())
    device = resolve_device(config.device, "segment.device")
    prepared = load_prepared(PREPARED_DIR / variant)
    task = make_task(config, prepared, RAW_DIR)
    train_rows, val_rows = task.rows("train"), task.rows("val")
    if len(train_rows) < 2:
        raise UserError(f"{PREPARED_DIR / variant} has {len(train_rows)} training images; "
                        "segmentation needs at least 2")

    generator = seed_everything(config.seed)
    model = task.build_model(load_weights=True).to(device)
    train_loader = task.loader(task.dataset(prepared.images, train_rows, config.augment),
                               shuffle=True, generator=generator)
    val_loader = task.loader(task.dataset(prepared.images, val_rows)) if len(val_rows) else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.task_lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, config.epochs * len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    log.info("%s task on %s (%d train, %d val images of %s) on %s; labels: %s", task.name,
             variant, len(train_rows), len(val_rows), "x".join(map(str, task.image_size)),
             device, ", ".join(task.class_names))

    with Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        speeds = []
        for epoch in range(1, config.epochs + 1):
            stats = train_one_epoch(model, train_loader, task.step, optimizer, scheduler,
                                    scaler, device, epoch)
            speeds.append(stats["images_per_s"])
            live.log_metric("train/loss", stats["loss"])
            message = f"epoch {epoch}/{config.epochs}: loss {stats['loss']:.4f}"
            if val_loader is not None:
                score = task.evaluate(model, val_loader, device)[task.key_metric]
                live.log_metric(f"val/{task.key_metric}", score if score is not None else 0.0)
                message += f", val {task.key_metric} {score}"
            log.info("%s, %.1f images/s", message, stats["images_per_s"])
            live.next_step()
        # The first epoch pays one-off warm-up costs; report the steady rate.
        steady = speeds[1:] or speeds
        live.log_metric("train_images_per_second", round(sum(steady) / len(steady), 1),
                        plot=False)
    save_checkpoint(MODEL_PATH, task, variant, model, optimizer, config.epochs)
    log.info("wrote %s", MODEL_PATH)


if __name__ == "__main__":
    main()
