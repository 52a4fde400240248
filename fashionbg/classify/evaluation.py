"""The stage `evaluate_classifier`: rebuild models/classifier.pt from its checkpoint, score it
on the test split of every built variant (its own, the other of original/rembg, and the
controlled ones); write the headline metrics (with the BG-gap and only-BG accuracy), their
detail, per-image predictions, the model's row of the train × test variant matrix and the
confusion matrix."""
from __future__ import annotations

import logging

import torch

from fashionbg.classify.engine import predict
from fashionbg.classify.metrics import (
    absent_classes,
    classification_metrics,
    confusion_matrix,
)
from fashionbg.classify.params import ClassifyConfig
from fashionbg.classify.plots import confusion_figure
from fashionbg.classify.task import ClassifyTask
from fashionbg.contracts.params import other_variant
from fashionbg.contracts.prepared import load_variants
from fashionbg.core import paths
from fashionbg.core.io import write_csv, write_json
from fashionbg.nn.checkpoint import load_checkpoint
from fashionbg.nn.device import resolve_device
from fashionbg.nn.params import EvaluateConfig
from fashionbg.nn.task import restore_model
from fashionbg.report.figures import save_figure
from fashionbg.report.headline import matrix_row, task_headline
from fashionbg.report.plots import per_class_bars

PREDICTION_COLUMNS = ("path", "tested_on", "label", "predicted", "correct")
log = logging.getLogger("evaluate_classifier")


def evaluate_classifier(settings: EvaluateConfig) -> None:
    """The stage `evaluate_classifier` (stages/evaluate_classifier.py) once its params are read."""
    device = resolve_device(settings.device, "evaluate.device")
    checkpoint = load_checkpoint(paths.CLASSIFIER, ("classify",))
    config = checkpoint.rebuild(ClassifyConfig.from_dict)   # the model as it was trained
    variant, labels = checkpoint.variant, checkpoint.classes
    caches = load_variants(paths.PREPARED, trained_on=variant)
    task = ClassifyTask(config, caches[variant])
    model, rows = restore_model(task, checkpoint, device)
    amp = checkpoint.amp(device)      # the precision it was trained in, where this device has it

    def evaluate(tested_on: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
        loader = task.loader(task.dataset(caches[tested_on].images, rows), settings.batch_size)
        logits, targets = predict(model, loader, device, amp)
        return classification_metrics(logits, targets, labels), logits, targets

    results = {tested_on: evaluate(tested_on) for tested_on in caches}
    metrics, logits, targets = results[variant]
    if absent := absent_classes(targets, labels):
        log.warning("no test image of class %s: accuracy null, left out of macro-F1",
                    ", ".join(absent))
    other = other_variant(variant)
    cross = results[other][0]
    test_paths = [caches[variant].meta["paths"][r] for r in rows]
    write_csv(task.spec.predictions, PREDICTION_COLUMNS, [
        row for tested_on, (_, scores, _) in results.items()
        for row in task.predictions(test_paths, tested_on, targets, scores)])
    by_variant = {tested_on: result[0] for tested_on, result in results.items()}
    top1 = {tested_on: scores["top1"] for tested_on, scores in by_variant.items()}
    write_json(task.spec.metrics, task_headline(by_variant, variant, other, task.spec.headline))
    write_json(task.spec.detail, {
        "variant": variant, "arch": config.arch, "best_epoch": checkpoint.epoch,
        "test": metrics, "cross_variant": {"variant": other, **cross},
        "by_test_variant": by_variant,
    })
    log.info("trained on %s, test top1 by test variant: %s", variant,
             ", ".join(f"{v} {score:.4f}" for v, score in top1.items()))

    matrix = confusion_matrix(logits, targets, len(labels)).numpy()
    save_figure(confusion_figure(matrix, labels, f"{config.arch} trained on {variant}, "
                                                 f"tested on {variant}"),
                paths.CLASSIFIER_PLOTS / "confusion.png",
                f"{config.arch} ({variant} images): test top-1 {metrics['top1']}, macro-F1 "
                f"{metrics['macro_f1']} on {metrics['images']} images; on {other} images "
                f"top-1 {cross['top1']}")
    write_json(paths.CLASSIFIER_PLOTS / "per_class.json", per_class_bars(
        {variant: metrics[task.spec.per_class_key], other: cross[task.spec.per_class_key]}))
    write_json(paths.CLASSIFIER_PLOTS / "variants.json", matrix_row(variant, top1))

