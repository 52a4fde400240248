"""Stage `evaluate_classifier`: test-split metrics, also on the other variant, and plots."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .classify.config import ClassifyConfig, classify_config
from .classify.data import make_loader
from .classify.engine import predict
from .classify.metrics import classification_metrics, confusion_matrix
from .classify.models import build_classifier
from .common.checkpoint import load_checkpoint
from .common.io import write_json
from .common.params import UserError, load_params, stage_main
from .common.runtime import resolve_device
from .datasets.prepared import VARIANTS, Prepared, load_prepared
from .datasets.raw import write_csv
from .plots.figures import confusion_figure, sample_grid, save_figure

PREPARED = Path("data/prepared")
CHECKPOINT = Path("models/classifier.pt")
METRICS = Path("metrics/classification.json")
PLOTS = Path("plots/classifier")
SAMPLES_PER_CLASS = 2
log = logging.getLogger("evaluate_classifier")


def sample_rows(data: Prepared, per_class: int) -> np.ndarray:
    """The first test images of each class, for the picture grid."""
    test = data.indices("test")
    return np.concatenate([test[data.labels[test] == c][:per_class]
                           for c in range(len(data.meta["labels"]))])


def evaluate(model: torch.nn.Module, data: Prepared, config: ClassifyConfig,
             device: torch.device) -> tuple[dict, torch.Tensor, torch.Tensor]:
    logits, targets = predict(model, make_loader(data, "test", config.batch_size), device)
    return classification_metrics(logits, targets, data.meta["labels"]), logits, targets


@stage_main
def main() -> None:
    config = classify_config(load_params())
    device = resolve_device(config.device, "classify.device")
    checkpoint = load_checkpoint(CHECKPOINT)
    if checkpoint["config"]["variant"] != config.variant:
        raise UserError(f"{CHECKPOINT} was trained on {checkpoint['config']['variant']}, "
                        f"data.variant is {config.variant}: run train_classifier first")
    model = build_classifier(config, len(checkpoint["labels"]))
    model.load_state_dict(checkpoint["model"])
    model.to(device)
    caches = {v: load_prepared(PREPARED / v) for v in VARIANTS}
    labels = caches[config.variant].meta["labels"]

    metrics, logits, targets = evaluate(model, caches[config.variant], config, device)
    other = next(v for v in VARIANTS if v != config.variant)
    cross, _, _ = evaluate(model, caches[other], config, device)
    write_json(METRICS, {
        "variant": config.variant, "arch": config.arch, "best_epoch": checkpoint["epoch"],
        "test": metrics,
        "cross_variant": {"variant": other, "top1": cross["top1"], "top5": cross["top5"],
                          "macro_f1": cross["macro_f1"]},
    })
    log.info("test top1 %.4f (on %s images: %.4f)", metrics["top1"], other, cross["top1"])

    preds = logits.argmax(1)
    write_csv(PLOTS / "confusion.csv", ("actual", "predicted"),
              [(labels[t], labels[p]) for t, p in zip(targets.tolist(), preds.tolist())])
    matrix = confusion_matrix(logits, targets, len(labels)).numpy()
    save_figure(confusion_figure(matrix, labels, f"{config.arch} on {config.variant} (test)"),
                PLOTS / "confusion.png")
    rows = sample_rows(caches["original"], SAMPLES_PER_CLASS)
    save_figure(sample_grid(caches["original"].images[rows], caches["rembg"].alpha[rows],
                            caches["rembg"].images[rows],
                            [labels[caches["original"].labels[r]] for r in rows]),
                PLOTS / "samples.png")


if __name__ == "__main__":
    main()
