"""Stage `evaluate_classifier`: rebuild models/classifier.pt from its checkpoint, score it on the
test split of the variant it was trained on and of the other variant; write the headline
metrics, their detail, per-image predictions and the confusion matrix."""
from __future__ import annotations

import logging

import torch

from fashionbg.classify.data import split_loader
from fashionbg.classify.engine import predict
from fashionbg.classify.metrics import (
    absent_classes,
    classification_metrics,
    confusion_matrix,
)
from fashionbg.classify.models import build_classifier
from fashionbg.classify.params import ClassifyConfig
from fashionbg.classify.plots import confusion_figure
from fashionbg.contracts.params import VARIANTS, other_variant
from fashionbg.contracts.prepared import check_same_rows, load_prepared
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.io import write_csv, write_json
from fashionbg.core.params import load_params
from fashionbg.nn.checkpoint import load_checkpoint
from fashionbg.nn.device import resolve_device
from fashionbg.nn.params import read_evaluate
from fashionbg.report.figures import save_figure
from fashionbg.report.headline import own_and_cross
from fashionbg.report.plots import per_class_bars

HEADLINE = ("top1", "top5", "macro_f1")
PREDICTION_COLUMNS = ("path", "tested_on", "label", "predicted", "correct")
log = logging.getLogger("evaluate_classifier")


@stage_main
def main() -> None:
    settings = read_evaluate(load_params())
    device = resolve_device(settings.device, "evaluate.device")
    checkpoint = load_checkpoint(paths.CLASSIFIER, ("classify",))
    config = checkpoint.rebuild(ClassifyConfig.from_dict)   # the model as it was trained
    variant, labels = checkpoint.variant, checkpoint.classes
    caches = {v: load_prepared(paths.prepared(v)) for v in VARIANTS}
    check_same_rows(caches["original"], caches["rembg"])
    if caches[variant].meta["labels"] != labels:
        raise UserError(f"the data's classes changed since {paths.CLASSIFIER} was trained; "
                        "run train_classifier again")
    if not len(caches[variant].indices("test")):
        raise UserError(f"{paths.prepared(variant)} has no test images")
    model = build_classifier(config, len(labels), load_weights=False)
    checkpoint.load_into(model)
    model.to(device)

    def evaluate(tested_on: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
        loader = split_loader(caches[tested_on], "test", settings.batch_size)
        logits, targets = predict(model, loader, device)
        return classification_metrics(logits, targets, labels), logits, targets

    metrics, logits, targets = evaluate(variant)
    if absent := absent_classes(targets, labels):
        log.warning("no test image of class %s: accuracy null, left out of macro-F1",
                    ", ".join(absent))
    other = other_variant(variant)
    cross, cross_logits, _ = evaluate(other)
    test_paths = [caches[variant].meta["paths"][r] for r in caches[variant].indices("test")]
    write_csv(paths.CLASSIFICATION_PREDICTIONS, PREDICTION_COLUMNS, [
        (path, tested_on, labels[t], labels[p], int(t == p))
        for tested_on, scores in ((variant, logits), (other, cross_logits))
        for path, t, p in zip(test_paths, targets.tolist(), scores.argmax(1).tolist())])
    write_json(paths.CLASSIFICATION_METRICS, own_and_cross(metrics, cross, HEADLINE))
    write_json(paths.CLASSIFICATION_DETAIL, {
        "variant": variant, "arch": config.arch, "best_epoch": checkpoint.epoch,
        "test": metrics, "cross_variant": {"variant": other, **cross},
    })
    log.info("test top1 %.4f (on %s images: %.4f)", metrics["top1"], other, cross["top1"])

    matrix = confusion_matrix(logits, targets, len(labels)).numpy()
    save_figure(confusion_figure(matrix, labels, f"{config.arch} trained on {variant}, "
                                                 f"tested on {variant}"),
                paths.CLASSIFIER_PLOTS / "confusion.png",
                f"{config.arch} ({variant} images): test top-1 {metrics['top1']}, macro-F1 "
                f"{metrics['macro_f1']} on {metrics['images']} images; on {other} images "
                f"top-1 {cross['top1']}")
    write_json(paths.CLASSIFIER_PLOTS / "per_class.json", per_class_bars(
        {variant: metrics["per_class_accuracy"], other: cross["per_class_accuracy"]}))


if __name__ == "__main__":
    main()
