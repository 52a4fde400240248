"""The stage `evaluate_segmenter`: rebuild models/segmenter.pt from its checkpoint, score it,
with the same ground truth, on the test images of every built variant (its own, the other of
original/rembg, and the controlled ones); write the headline metrics (mIoU or mask AP, with the
BG-gap and only-BG score), their detail, per-image results and plots/segmentation/ (overlays per
test variant, per-class scores, the model's row of the train × test variant matrix)."""
from __future__ import annotations

import logging

from fashionbg.contracts.params import other_variant
from fashionbg.contracts.prepared import load_variants
from fashionbg.core import paths
from fashionbg.core.io import atomic_dir, write_csv, write_json
from fashionbg.nn.checkpoint import load_checkpoint
from fashionbg.nn.device import resolve_device
from fashionbg.nn.params import EvaluateConfig
from fashionbg.nn.task import restore_model
from fashionbg.report.headline import matrix_row, task_headline
from fashionbg.report.plots import per_class_bars
from fashionbg.segment.overlays import save_overlays
from fashionbg.segment.params import SegmentConfig
from fashionbg.segment.tasks import make_task

PREDICTION_COLUMNS = ("path", "tested_on", "class", "intersection", "union", "truth")
log = logging.getLogger("evaluate_segmenter")


def evaluate_segmenter(settings: EvaluateConfig) -> None:
    """The stage `evaluate_segmenter` (stages/evaluate_segmenter.py) once its params are read."""
    device = resolve_device(settings.device, "evaluate.device")
    checkpoint = load_checkpoint(paths.SEGMENTER, ("semantic", "instance"))
    config = checkpoint.rebuild(SegmentConfig.from_dict)   # the model as it was trained
    variant = checkpoint.variant
    caches = load_variants(paths.PREPARED, trained_on=variant)
    task = make_task(config, caches[variant], paths.RAW)
    model, rows = restore_model(task, checkpoint, device)
    amp = checkpoint.amp(device)      # the precision it was trained in, where this device has it

    other, key = other_variant(variant), task.spec.key_metric
    scores, per_image, detections = {}, [], []
    test_paths = [caches[variant].meta["paths"][r] for r in rows]
    for tested_on in caches:
        loader = task.loader(task.dataset(caches[tested_on].images, rows), settings.batch_size)
        images: list | None = [] if task.keeps_per_image(tested_on == variant) else None
        scores[tested_on] = task.evaluate(model, loader, device, images, amp)
        if images is not None:
            csv_rows, records = task.predictions(test_paths, tested_on, images)
            per_image += csv_rows
            detections += records
        log.info("trained on %s, tested on %s: %s %s", variant, tested_on, key,
                 scores[tested_on][key])
    # Per image: semantic intersection, union and truth pixels per class; instance detections
    # and ground truth (each file is empty for the other task).
    write_csv(paths.SEGMENTATION_PREDICTIONS, PREDICTION_COLUMNS, per_image)
    write_json(paths.INSTANCE_PREDICTIONS, {
        "tested_on": variant, "classes": task.class_names[1:] if detections else [],
        "images": detections}, indent=None)   # run lengths: one line keeps the file small

    by_variant = {v: scores[v][key] for v in caches}
    model_name = task.model_name
    with atomic_dir(paths.SEGMENTATION_PLOTS) as tmp:
        save_overlays(task, model, caches, rows[:settings.overlays], device, amp, tmp / "overlays",
                      f"{model_name} trained on {variant}", scores)
        write_json(tmp / "per_class.json", per_class_bars(
            {tested_on: scores[tested_on][task.spec.per_class_key]
             for tested_on in (variant, other)}))
        write_json(tmp / "variants.json", matrix_row(variant, by_variant))
    write_json(task.spec.metrics, task_headline(scores, variant, other, task.spec.headline))
    write_json(task.spec.detail, {
        "task": task.spec.name,
        "model": model_name,
        "variant": variant,
        "best_epoch": checkpoint.epoch,
        "test": {"images": len(rows), **scores[variant]},
        "cross_variant": {"variant": other, "images": len(rows), **scores[other]},
        "by_test_variant": {v: {"images": len(rows), **scores[v]} for v in caches},
    })
    log.info("wrote %s, %s and %s", task.spec.metrics, task.spec.detail, paths.SEGMENTATION_PLOTS)

