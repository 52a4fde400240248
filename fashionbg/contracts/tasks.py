"""The three tasks as the pipeline's files and the study see them: the params section that
configures each, the seed a study cell sets, its stages, the metric that selects its model and
makes its claims, and where its numbers land. Torch-free, so the study reads it without loading
a model; the task objects the training and evaluation stages use carry one each
(`fashionbg.nn.task`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fashionbg.core import paths


@dataclass(frozen=True)
class TaskSpec:
    name: str
    section: str                  # the params.yaml section that configures it
    train_stage: str              # also the name of its dvclive directory
    evaluate_stage: str
    key_metric: str               # model selection, the study's claims, the headline
    key_metric_words: str         # its name in figures
    headline: tuple[str, ...]     # the numbers metrics/<task>.json gives per test variant
    per_class_key: str            # the per-class scores in an evaluation's metrics
    per_class_words: str
    checkpoint: Path
    metrics: Path
    detail: Path
    predictions: Path             # per-image results, which the study resamples
    # The keys of its section a training step's time depends on (weights, seeds and learning
    # rates do not change it): the pre-flight times one model per distinct set of them.
    step_keys: tuple[str, ...]

    @property
    def seed_key(self) -> str:
        """The param a study cell sets to its seed."""
        return f"{self.section}.seed"

    @property
    def batch_size_key(self) -> str:
        return f"{self.section}.batch_size"


def _segmentation(name: str, *, key_metric: str, key_metric_words: str,
                  per_class_key: str, per_class_words: str, predictions: Path) -> TaskSpec:
    """Semantic and instance segmentation share the segment section, its two stages and its
    checkpoint and metrics files; each headlines its key metric."""
    return TaskSpec(
        name, "segment", "train_segmenter", "evaluate_segmenter",
        key_metric=key_metric, key_metric_words=key_metric_words, headline=(key_metric,),
        per_class_key=per_class_key, per_class_words=per_class_words,
        checkpoint=paths.SEGMENTER, metrics=paths.SEGMENTATION_METRICS,
        detail=paths.SEGMENTATION_DETAIL, predictions=predictions,
        step_keys=("task", "arch", "encoder", "decoder_width", "instance_backbone", "batch_size",
                   "device"))


# Each task by name: a name without an entry is a KeyError, never another task.
TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec(
        "classify", "classify", "train_classifier", "evaluate_classifier",
        key_metric="top1", key_metric_words="top-1", headline=("top1", "top5", "macro_f1"),
        per_class_key="per_class_accuracy", per_class_words="accuracy",
        checkpoint=paths.CLASSIFIER, metrics=paths.CLASSIFICATION_METRICS,
        detail=paths.CLASSIFICATION_DETAIL, predictions=paths.CLASSIFICATION_PREDICTIONS,
        step_keys=("arch", "batchnorm", "batch_size", "device")),
    "semantic": _segmentation(
        "semantic", key_metric="miou", key_metric_words="mIoU",
        per_class_key="per_class_iou", per_class_words="IoU",
        predictions=paths.SEGMENTATION_PREDICTIONS),
    "instance": _segmentation(
        "instance", key_metric="mask_ap", key_metric_words="mask AP",
        per_class_key="per_class_mask_ap", per_class_words="mask AP",
        predictions=paths.INSTANCE_PREDICTIONS),
}
