"""Every path the pipeline writes or reads, relative to the project root (dvc.yaml names the
same ones). Stages run from the root, as `dvc repro` does."""
from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")

RAW = Path("data/raw")
# The refusals of a failed download (data/raw itself is left as it was).
FAILED_QUARANTINE = Path("data/raw.quarantine-failed.csv")
REMBG = Path("data/rembg")
PREPARED = Path("data/prepared")
DATASET_CACHE = Path(".cache/datasets")
SOD_CACHE = Path(".cache/rembg")        # masks by photo content, for resuming
# The launcher's scratch (per-rank error files) while a training stage runs several processes.
LAUNCH_SCRATCH = Path(".cache/launch")
PREFLIGHT_SCRATCH = Path(".cache/preflight")   # weights fetched to prove they can be

SOD_HOME = Path("models/rembg")
CLASSIFIER = Path("models/classifier.pt")
SEGMENTER = Path("models/segmenter.pt")

# Headline metrics (what `dvc exp show` lists) and their detail (not declared as metrics).
BACKGROUND_METRICS = Path("metrics/background.json")
CLASSIFICATION_METRICS = Path("metrics/classification.json")
SEGMENTATION_METRICS = Path("metrics/segmentation.json")
BACKGROUND_DETAIL = REMBG / "summary.json"   # inside the cached masks, for prepare's caption
CLASSIFICATION_DETAIL = Path("metrics/detail/classification.json")
SEGMENTATION_DETAIL = Path("metrics/detail/segmentation.json")
# Per-image test results (git-tracked), so variants are compared on the same test images.
CLASSIFICATION_PREDICTIONS = Path("predictions/classification.csv")
SEGMENTATION_PREDICTIONS = Path("predictions/segmentation.csv")
INSTANCE_PREDICTIONS = Path("predictions/instances.json")   # COCO-style, mask R-CNN only
SAMPLES = Path("plots/samples.png")
CLASSIFIER_PLOTS = Path("plots/classifier")
SEGMENTATION_PLOTS = Path("plots/segmentation")


def prepared(variant: str) -> Path:
    return PREPARED / variant


def live_dir(stage: str) -> Path:
    """One dvclive directory per stage: a new `Live` wipes its own."""
    return Path("dvclive") / stage
