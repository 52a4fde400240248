"""The statistics of the study: intervals over seeds, paired differences on the same test images
with a bootstrap over images and seeds, a named paired test, and the verdict rule.

Per-image results come as arrays shaped (seeds, images) of 0/1 correctness for classification,
or (seeds, images, classes, 3) of intersection, union and ground-truth pixels for semantic
segmentation, where the dataset metric is recomputed from resampled sums (so the bootstrap
resamples mIoU itself, not a per-image proxy). Mask AP does not split into per-image terms:
instance segmentation gets intervals and a paired t-test over seeds only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Effect:
    """A difference (rembg − original, or a difference of such gains) and its evidence."""
    interval: Interval
    test: str       # the paired test's name
    p: float | None
    seeds: int
    images: int     # 0 where the test runs over seeds


def mean_interval(values: list[float]) -> Interval:
    """Mean and Student-t interval over seeds (no interval from one seed)."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return Interval(mean, None, None)
    if np.all(data == data[0]):   # no spread: scipy would return nan bounds
        return Interval(mean, mean, mean)
    low, high = stats.t.interval(LEVEL, len(data) - 1, loc=mean, scale=stats.sem(data))
    return Interval(mean, float(low), float(high))


def score(per_image: np.ndarray, seeds: np.ndarray, images: np.ndarray) -> float:
    """The task metric averaged over `seeds`, on test images `images` (indices, repeats
    allowed): top-1, or mIoU from summed intersections and unions (classes without ground
    truth in the resample are left out, as in the reported metric)."""
    picked = per_image[seeds][:, images]
    if picked.ndim == 2:
        return float(picked.mean())
    return float(np.nanmean(_iou(picked.sum(axis=1)), axis=1).mean())


def per_image_score(per_image: np.ndarray) -> np.ndarray:
    """Each test image's own score averaged over seeds: correctness, or its mean IoU over the
    classes present in it (for the rank test, which needs one number per image)."""
    if per_image.ndim == 2:
        return per_image.mean(axis=0)
    with np.errstate(all="ignore"):
        return np.nanmean(np.nanmean(_iou(per_image), axis=2), axis=0)


def _iou(terms: np.ndarray) -> np.ndarray:
    """Intersection / union where the class has ground truth, else nan; terms (..., 3)."""
    union = terms[..., 1]
    return np.divide(terms[..., 0], union, out=np.full(union.shape, np.nan),
                     where=terms[..., 2] > 0)


def bootstrap(statistic: Callable[[np.ndarray, np.ndarray], float], seeds: int, images: int,
              seed: int = 0) -> Interval:
    """Two-level percentile bootstrap: resample seeds, then test images, with replacement; the
    same resampled images serve every term of `statistic`, so differences stay paired."""
    rng = np.random.default_rng(seed)
    every = np.arange(seeds), np.arange(images)
    draws = np.array([statistic(rng.integers(0, seeds, seeds), rng.integers(0, images, images))
                      for _ in range(RESAMPLES)])
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(statistic(*every), float(low), float(high))


def wilcoxon_p(differences: np.ndarray) -> float:
    """Wilcoxon signed-rank test of paired per-image differences (1.0 if all are zero)."""
    differences = differences[~np.isnan(differences)]
    if not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences).pvalue)


def gain(rembg: np.ndarray, original: np.ndarray) -> Effect:
    """rembg − original of one arm, from per-image results of the same seeds and images."""
    seeds, images = original.shape[:2]
    interval = bootstrap(lambda s, i: score(rembg, s, i) - score(original, s, i), seeds, images)
    p = wilcoxon_p(per_image_score(rembg) - per_image_score(original))
    return Effect(interval, "Wilcoxon signed-rank over test images", p, seeds, images)


def interaction(arm: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray]
                ) -> Effect:
    """gain(arm) − gain(base) on the same test images; seeds are resampled jointly."""
    seeds = min(arm[0].shape[0], base[0].shape[0])
    arm = (arm[0][:seeds], arm[1][:seeds])
    base = (base[0][:seeds], base[1][:seeds])
    images = arm[0].shape[1]

    def statistic(s: np.ndarray, i: np.ndarray) -> float:
        return (score(arm[0], s, i) - score(arm[1], s, i)
                - score(base[0], s, i) + score(base[1], s, i))

    per_image = (per_image_score(arm[0]) - per_image_score(arm[1])
                 - per_image_score(base[0]) + per_image_score(base[1]))
    return Effect(bootstrap(statistic, seeds, images), "Wilcoxon signed-rank over test images",
                  wilcoxon_p(per_image), seeds, images)


def seed_gain(rembg: list[float], original: list[float]) -> Effect:
    """rembg − original from one score per seed (paired by seed)."""
    return _seed_effect(np.asarray(rembg) - np.asarray(original))


def seed_interaction(arm: tuple[list[float], list[float]],
                     base: tuple[list[float], list[float]]) -> Effect:
    n = min(len(arm[0]), len(base[0]))
    return _seed_effect(np.asarray(arm[0][:n]) - np.asarray(arm[1][:n])
                        - np.asarray(base[0][:n]) + np.asarray(base[1][:n]))


def _seed_effect(differences: np.ndarray) -> Effect:
    p = None
    if len(differences) >= 2 and np.any(differences != differences[0]):
        p = float(stats.ttest_1samp(differences, 0.0).pvalue)   # = ttest_rel on the pairs
    return Effect(mean_interval(list(differences)), "paired t-test over seeds", p,
                  len(differences), 0)


VERDICTS = ("supported", "not supported", "reversed", "inconclusive")


def verdict(effect: Interval, expect: str, minimal: float) -> str:
    """What the interval says of a claim that expects a positive, a negative, or a minimal or
    negative ("not_positive") difference."""
    low, high = effect.low, effect.high
    if low is None or high is None:
        return "inconclusive"
    if expect == "positive":
        return ("supported" if low > 0 else "reversed" if high < 0
                else "not supported" if high < minimal else "inconclusive")
    if expect == "negative":
        return ("supported" if high < 0 else "reversed" if low > 0
                else "not supported" if low > -minimal else "inconclusive")
    return "supported" if high < minimal else "not supported" if low > minimal else "inconclusive"
