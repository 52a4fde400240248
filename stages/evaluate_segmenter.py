"""Stage `evaluate_segmenter`: score models/segmenter.pt on the test split of the variant it
was trained on and, with the same ground truth, on the other variant's test images; write
metrics/segmentation.json and plots/segmentation/ (overlays per test variant, per-class scores).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .common.checkpoint import load_checkpoint
from .common.io import atomic_dir, write_json
from .common.params import UserError, load_params, stage_main
from .common.runtime import resolve_device
from .datasets.prepared import VARIANTS, Prepared, load_prepared
from .segment.params import SegmentConfig, read_config
from .segment.plots import class_colors, overlay_grid
from .segment.tasks import make_task

PREPARED_DIR = Path("data/prepared")
RAW_DIR = Path("data/raw")
MODEL_PATH = Path("models/segmenter.pt")
METRICS_PATH = Path("metrics/segmentation.json")
PLOTS_DIR = Path("plots/segmentation")
log = logging.getLogger("evaluate_segmenter")


def check_same_rows(a: Prepared, b: Prepared) -> None:
    """Cross-variant scores are only meaningful on the same photos with the same ground truth."""
    same = (a.meta["paths"] == b.meta["paths"] and np.array_equal(a.splits, b.splits)
            and (a.masks is None) == (b.masks is None)
            and (a.masks is None or np.array_equal(a.masks, b.masks)))
    if not same:
        raise UserError(f"{PREPARED_DIR}/original and {PREPARED_DIR}/rembg do not hold the same "
                        "rows and ground truth; re-run the prepare stage")


@stage_main
def main() -> None:
    variant, params_config = read_config(load_params())
    device = resolve_device(params_config.device, "segment.device")
    checkpoint = load_checkpoint(MODEL_PATH)
    if checkpoint["variant"] != variant:
        raise UserError(f"{MODEL_PATH} was trained on {checkpoint['variant']} but data.variant = "
                        f"{variant}; run train_segmenter first")
    config = SegmentConfig.from_dict(checkpoint["config"])   # the model as it was trained
    caches = {v: load_prepared(PREPARED_DIR / v) for v in VARIANTS}
    check_same_rows(caches["original"], caches["rembg"])
    task = make_task(config, caches[variant], RAW_DIR)
    if task.class_names != checkpoint["class_names"]:
        raise UserError(f"the data's classes changed since {MODEL_PATH} was trained; "
                        "run train_segmenter again")
    rows = task.rows("test")
    if not len(rows):
        raise UserError(f"{PREPARED_DIR / variant} has no test images with ground truth")
    model = task.build_model(load_weights=False)
    model.load_state_dict(checkpoint["model"])
    model.to(device)

    other = next(v for v in VARIANTS if v != variant)
    scores = {}
    for tested_on in (variant, other):
        loader = task.loader(task.dataset(caches[tested_on].images, rows))
        scores[tested_on] = task.evaluate(model, loader, device)
        log.info("trained on %s, tested on %s: %s %s", variant, tested_on, task.key_metric,
                 scores[tested_on][task.key_metric])

    shown = rows[:params_config.overlays]
    per_class_key = "per_class_iou" if task.name == "semantic" else "per_class_mask_ap"
    with atomic_dir(PLOTS_DIR) as tmp:
        (tmp / "overlays").mkdir()
        if len(shown):
            for tested_on in VARIANTS:
                overlay_grid(tmp / "overlays" / f"{tested_on}.png",
                             task.overlay_rows(model, caches[tested_on].images, shown, device),
                             task.class_names, class_colors(len(task.class_names)),
                             f"{task.name} model trained on {variant}, tested on {tested_on}")
        # Classes with no score (absent from truth and prediction) get no bar.
        per_class = scores[variant][per_class_key].items()
        write_json(tmp / "per_class.json",
                   [{"class": k, "score": v} for k, v in per_class if v is not None])
    write_json(METRICS_PATH, {
        "task": task.name,
        "variant": variant,
        "test": {"images": len(rows), **scores[variant]},
        "cross_variant": {"variant": other, "images": len(rows), **scores[other]},
    })
    log.info("wrote %s and %s", METRICS_PATH, PLOTS_DIR)


if __name__ == "__main__":
    main()
