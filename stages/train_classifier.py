"""Stage `train_classifier`: train `classify.arch` on data/prepared/${data.variant}."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from dvclive import Live

from .classify.config import ClassifyConfig, classify_config
from .classify.data import augmentation, make_loader
from .classify.engine import predict, train_one_epoch
from .classify.metrics import classification_metrics
from .classify.models import build_classifier
from .common.checkpoint import save_checkpoint
from .common.params import UserError, load_params, stage_main
from .common.runtime import resolve_device, seed_everything
from .datasets.prepared import load_prepared

PREPARED = Path("data/prepared")
CHECKPOINT = Path("models/classifier.pt")
LIVE_DIR = Path("dvclive/train_classifier")
log = logging.getLogger("train_classifier")


def make_optimizer(config: ClassifyConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9,
                               weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


@stage_main
def main() -> None:
    config = classify_config(load_params())
    device = resolve_device(config.device, "classify.device")
    data = load_prepared(PREPARED / config.variant)
    labels = data.meta["labels"]
    if not labels or (data.labels[data.indices("train")] < 0).any():
        raise UserError("this data source has no classification labels; "
                        "choose a source with a classification task (e.g. demo, fashionstyle14)")
    generator = seed_everything(config.seed)
    size = tuple(data.meta["image_size"])
    pin = device.type == "cuda"
    train_loader = make_loader(data, "train", config.batch_size,
                               augmentation(config.augment, size), generator, pin)
    val_loader = make_loader(data, "val", config.batch_size, pin_memory=pin)

    model = build_classifier(config, len(labels)).to(device)
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    best, speeds = -1.0, []
    with Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        for epoch in range(1, config.epochs + 1):
            stats = train_one_epoch(model, train_loader, optimizer, scaler, device)
            scheduler.step()
            val = classification_metrics(*predict(model, val_loader, device), labels)
            speeds.append(stats.images_per_second)
            for name, value in (("train/loss", stats.loss), ("train/top1", stats.accuracy),
                                ("val/loss", val["loss"]), ("val/top1", val["top1"])):
                live.log_metric(name, round(value, 4))
            log.info("epoch %d/%d: loss %.3f top1 %.3f | val loss %.3f top1 %.3f | %.0f img/s",
                     epoch, config.epochs, stats.loss, stats.accuracy, val["loss"],
                     val["top1"], stats.images_per_second)
            if val["top1"] > best:  # keep the epoch that does best on validation
                best = val["top1"]
                save_checkpoint(CHECKPOINT, {"model": model.state_dict(),
                                             "optimizer": optimizer.state_dict(),
                                             "epoch": epoch, "config": config.as_dict(),
                                             "labels": labels})
                live.summary["best_epoch"] = epoch
            live.next_step()
        live.summary["best_val_top1"] = best
        live.summary["train_images_per_second"] = round(sum(speeds) / len(speeds), 1)


if __name__ == "__main__":
    main()
