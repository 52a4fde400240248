"""The statistics of the study: paired differences rembg − original on the same test images,
with a standard error that counts both sources of variation (the trained models and the test
images), the tests a claim needs (difference, non-superiority, equivalence), Holm's correction
across a preset's claims, the probability of improvement over seeds, and power.

Per-image results come per variant as (seeds, images) 0/1 correctness (classification),
(seeds, images, classes, 3) intersection, union and ground-truth pixels (semantic; mIoU is
recomputed from resampled sums), or one MaskAP per seed (instance; mask AP is recomputed from
the per-image detections). Each resample of test images is a vector of image weights (how often
it was drawn) applied to every seed and variant alike, so differences stay paired by image.

The standard error of a difference D (the mean over seeds of each seed's difference d_s) comes
from the crossed random-effects model d = δ + seed + image + residual:
  se² = σ²_seed/S + σ²_image/N + σ²_residual/(SN),
estimated without assuming the metric is a mean of per-image terms: the spread of the d_s over
seeds (S − 1 degrees of freedom) holds σ²_seed/S + σ²_residual/(SN); the bootstrap over images
with all seeds held fixed holds σ²_image/N + σ²_residual/(SN); and the bootstrap of each seed
alone tells the residual term, so it is counted once. Degrees of freedom by Satterthwaite.
With 2-5 seeds a percentile bootstrap over seeds cannot cover: its spread is (S − 1)/S of the
truth and it has no t quantile.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95
RESAMPLES = 2000
MAX_PLAN = 100_000   # the most seeds or images a power calculation looks for


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Effect:
    """A difference (rembg − original, or a difference of such gains) and its uncertainty."""
    estimate: float
    seeds: int
    images: int            # 0 where only one score per seed is known
    spread: float          # variance of the mean of the seeds' differences: seed + residual
    joint: float           # over images, all seeds held fixed: image + residual
    residual: float        # the residual term, σ²_residual / (S N)
    test: str = "t-test over seeds and test images"

    @property
    def seed_var(self) -> float:
        """σ²_seed / S (for planning other sizes)."""
        return max(self.spread - self.residual, 0.0)

    @property
    def image_var(self) -> float:
        """σ²_image / N."""
        return max(self.joint - self.residual, 0.0)

    @property
    def se(self) -> float | None:
        """sqrt(spread + image term): the seeds' spread is never replaced by a smaller guess
        (with 2-5 seeds it is often small by chance, and the truth is then larger)."""
        if np.isnan(self.spread):
            return None
        return float(np.sqrt(self.spread + self.image_var))

    @property
    def df(self) -> float | None:
        """Satterthwaite for se² = spread (S − 1 degrees of freedom) + joint (N − 1) −
        residual ((S − 1)(N − 1)), the last two only where the image term is positive."""
        if self.se is None:
            return None
        terms = [(self.spread, self.seeds - 1)]
        if self.joint > self.residual:
            terms += [(self.joint, self.images - 1),
                      (self.residual, (self.seeds - 1) * (self.images - 1))]
        denominator = sum(term ** 2 / f for term, f in terms if f > 0)
        return float(self.se ** 4 / denominator) if denominator > 0 else float(self.seeds - 1)

    def interval_at(self, level: float) -> Interval:
        if self.se is None:
            return Interval(self.estimate, None, None)
        half = float(stats.t.ppf((1 + level) / 2, self.df)) * self.se
        return Interval(self.estimate, self.estimate - half, self.estimate + half)

    @property
    def interval(self) -> Interval:
        return self.interval_at(LEVEL)

    def p_value(self, null: float = 0.0, alternative: str = "two-sided") -> float | None:
        """p of H0: δ = null against δ ≠ null, δ < null ("less") or δ > null ("greater")."""
        if self.se is None:
            return None
        shift = self.estimate - null
        if self.se == 0:
            t = 0.0 if shift == 0 else np.copysign(np.inf, shift)
        else:
            t = shift / self.se
        if alternative == "less":
            return float(stats.t.cdf(t, self.df))
        if alternative == "greater":
            return float(stats.t.sf(t, self.df))
        return float(min(1.0, 2 * stats.t.sf(abs(t), self.df)))

    @property
    def p(self) -> float | None:
        return self.p_value()

    def tost_p(self, low: float, high: float) -> float | None:
        """Two one-sided tests of low < δ < high (equivalence): the larger p."""
        below, above = self.p_value(low, "greater"), self.p_value(high, "less")
        return None if below is None or above is None else max(below, above)  # both or neither


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


@functools.lru_cache(maxsize=8)
def image_weights(images: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(1 + resamples, images): all images once, then bootstrap draws as counts per image
    (seeded, so every effect on the same images shares its resamples; read-only)."""
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(images, np.full(images, 1 / images), size=resamples)
    weights = np.vstack([np.ones(images), draws]).astype(float)
    weights.flags.writeable = False
    return weights


def seed_scores(per_image: Any, weights: np.ndarray) -> np.ndarray:
    """(seeds, 1 + resamples): the metric of each seed on each weighted set of test images:
    top-1, or mIoU from weighted sums of intersections and unions (classes without ground truth
    in the resample are left out, as in the reported metric), or mask AP."""
    # einsum, not @: BLAS threads fight over a busy machine's cores for a product this small
    if isinstance(per_image, np.ndarray) and per_image.ndim == 2:
        return np.einsum("sn,bn->sb", per_image, weights) / weights.sum(axis=1)
    if isinstance(per_image, np.ndarray):
        sums = np.einsum("bn,snck->sbck", weights, per_image)
        with warnings.catch_warnings():   # a resample may hold no class at all
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(_iou(sums), axis=2)
    return np.array([[m.score(w) for w in weights] for m in per_image])


def stack(per_seed: list[Any]) -> Any:
    """One variant's per-image results of several seeds in the layout seed_scores takes:
    arrays stacked (seeds first), MaskAPs listed."""
    return np.stack(per_seed) if isinstance(per_seed[0], np.ndarray) else list(per_seed)


def score(per_image: Any) -> float:
    """The task metric on all test images, averaged over seeds."""
    images = len(per_image[0]) if isinstance(per_image, np.ndarray) else per_image[0].images
    return float(seed_scores(per_image, np.ones((1, images))).mean())


def _iou(terms: np.ndarray) -> np.ndarray:
    """Intersection / union where the class has ground truth, else nan; terms (..., 3)."""
    union = terms[..., 1]
    return np.divide(terms[..., 0], union, out=np.full(union.shape, np.nan),
                     where=terms[..., 2] > 0)


def effect(differences: np.ndarray, images: int) -> Effect:
    """The estimate and variance terms from (seeds, 1 + resamples) differences: column 0 on
    all test images, the others on bootstrap resamples of them (none with `images` = 0)."""
    seeds = len(differences)
    per_seed = differences[:, 0]
    if seeds < 2:
        nan = float("nan")
        return Effect(float(per_seed.mean()), seeds, images, nan, nan, nan)
    spread = float(per_seed.var(ddof=1)) / seeds
    joint = own = residual = 0.0
    if differences.shape[1] > 1:
        draws = differences[:, 1:]
        joint = float(draws.mean(axis=0).var(ddof=1))     # image term + residual/(SN)
        own = float(draws.var(axis=1, ddof=1).mean())     # image term + residual/N
        residual = max((own - joint) / (seeds - 1), 0.0)  # residual/(SN)
    return Effect(float(per_seed.mean()), seeds, images, spread, joint, residual)


def gain(rembg: Any, original: Any, resamples: int = RESAMPLES) -> Effect:
    """rembg − original of one arm, from per-image results of the same seeds and images."""
    images = _images(original)
    weights = image_weights(images, resamples)
    return effect(seed_scores(rembg, weights) - seed_scores(original, weights), images)


def interaction(arm: tuple[Any, Any], base: tuple[Any, Any], resamples: int = RESAMPLES
                ) -> Effect:
    """gain(arm) − gain(base) on the same test images, seeds paired by position."""
    seeds = min(len(arm[0]), len(base[0]))
    images = _images(arm[0])
    weights = image_weights(images, resamples)
    rembg_a, original_a, rembg_b, original_b = (seed_scores(x[:seeds], weights)
                                                for x in (*arm, *base))
    return effect(rembg_a - original_a - rembg_b + original_b, images)


def _images(per_image: Any) -> int:
    return per_image.shape[1] if isinstance(per_image, np.ndarray) else per_image[0].images


def seed_gain(rembg: list[float], original: list[float]) -> Effect:
    """rembg − original from one score per seed (paired by seed): a paired t-test."""
    return _seed_effect(np.asarray(rembg) - np.asarray(original))


def seed_interaction(arm: tuple[list[float], list[float]],
                     base: tuple[list[float], list[float]]) -> Effect:
    n = min(len(arm[0]), len(base[0]))
    return _seed_effect(np.asarray(arm[0][:n]) - np.asarray(arm[1][:n])
                        - np.asarray(base[0][:n]) + np.asarray(base[1][:n]))


def _seed_effect(differences: np.ndarray) -> Effect:
    found = effect(np.asarray(differences, float)[:, None], 0)
    return replace(found, test="paired t-test over seeds")


def holm(pvalues: Sequence[float], alpha: float) -> list[float]:
    """Holm-adjusted p-values (statsmodels); reject where adjusted p < alpha."""
    if not pvalues:
        return []
    return [float(p) for p in multipletests(list(pvalues), alpha=alpha, method="holm")[1]]


def probability_of_improvement(rembg: list[float], original: list[float]) -> Interval:
    """P(a rembg seed beats an original seed), ties counting half (rliable's probability of
    improvement, the Mann-Whitney U over all seed pairs), with a 95 % percentile bootstrap
    that resamples each variant's seeds separately (stratified)."""
    x, y = np.asarray(rembg, float), np.asarray(original, float)
    estimate = float(stats.mannwhitneyu(x, y).statistic) / (len(x) * len(y))
    if min(len(x), len(y)) < 2:
        return Interval(estimate, None, None)

    def improvement(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
        wins = a[..., :, None] - b[..., None, :]
        return ((wins > 0) + 0.5 * (wins == 0)).mean(axis=(-1, -2))

    with warnings.catch_warnings():   # a degenerate bootstrap (every seed alike) is nan
        warnings.simplefilter("ignore")
        result = stats.bootstrap((x, y), improvement, paired=False, vectorized=True,
                                 n_resamples=RESAMPLES, confidence_level=LEVEL,
                                 method="percentile", rng=np.random.default_rng(0))
    low, high = result.confidence_interval
    if np.isnan(low) or np.isnan(high):
        return Interval(estimate, estimate, estimate)
    return Interval(estimate, float(low), float(high))


def primary_p(found: Effect, expect: str, margin: float) -> float | None:
    """The p-value of the test that supports a claim (the one Holm corrects):
    positive / negative: δ ≠ 0 (two-sided; the sign then says supported or reversed);
    not_positive: non-superiority, H0 δ ≥ margin against δ < margin;
    equivalent: TOST, H0 |δ| ≥ margin against −margin < δ < margin."""
    if expect in ("positive", "negative"):
        return found.p_value()
    if expect == "not_positive":
        return found.p_value(margin, "less")
    return found.tost_p(-margin, margin)


# Every word verdict() returns (the report prints one per claim; tests read this set).
VERDICTS = frozenset({"supported", "reversed", "not supported", "inconclusive"})


def verdict(found: Effect | None, expect: str, margin: float, adjusted: float | None,
            alpha: float) -> str:
    """supported / reversed from the Holm-adjusted p of the claim's test; "not supported" where
    a one-sided level-alpha test shows the effect on the wrong side of the margin (smaller
    than the margin in the expected direction, or above it for a minimal-effect claim)."""
    if found is None or adjusted is None:
        return "inconclusive"
    if adjusted < alpha:
        if expect == "positive":
            return "supported" if found.estimate > 0 else "reversed"
        if expect == "negative":
            return "supported" if found.estimate < 0 else "reversed"
        return "supported"

    def p(null: float, alternative: str) -> float:
        value = found.p_value(null, alternative)
        assert value is not None  # an adjusted p means the effect has an se, so every p
        return value

    shown = {"positive": p(margin, "less"),
             "negative": p(-margin, "greater"),
             "not_positive": p(margin, "greater"),
             "equivalent": min(p(margin, "greater"), p(-margin, "less"))}[expect]
    return "not supported" if shown < alpha else "inconclusive"


def detectable(found: Effect, alpha: float, power: float) -> float | None:
    """The smallest |δ| the two-sided level-alpha test finds with probability `power`."""
    if found.se is None or found.df is None:  # both or neither
        return None
    return _needed_multiple(found.df, alpha, power) * found.se


def _needed_multiple(df: float, alpha: float, power: float) -> float:
    return float(stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df))


def _planned_se(found: Effect, seeds: int, images: int) -> tuple[float, float]:
    """se and Satterthwaite df of the same design with `seeds` seeds and `images` images:
    σ²_seed/S, σ²_image/N and σ²_residual/(SN) rescaled, each with its own degrees of
    freedom."""
    s, n = found.seeds, max(found.images, 1)
    terms = (found.seed_var * s / seeds, found.image_var * n / images,
             found.residual * s * n / (seeds * images))
    freedom = (seeds - 1, images - 1, (seeds - 1) * (images - 1))
    total = sum(terms)
    denominator = sum(t ** 2 / f for t, f in zip(terms, freedom) if t and f > 0)
    df = total ** 2 / denominator if denominator > 0 else seeds - 1.0
    return float(np.sqrt(total)), float(df)


def seeds_needed(found: Effect, target: float, alpha: float, power: float) -> int | None:
    """Seeds (at this many test images) for power `power` at |δ| = target; None if more than
    MAX_PLAN or not known."""
    return _search(lambda s: _planned_se(found, s, max(found.images, 1)), target, alpha, power,
                   found)


def images_needed(found: Effect, target: float, alpha: float, power: float) -> int | None:
    """Test images (at this many seeds) for the same; None where no number of images is
    enough (the seeds' variance alone is too large) or there are no per-image results."""
    if found.images == 0:
        return None
    return _search(lambda n: _planned_se(found, found.seeds, n), target, alpha, power, found)


def _search(plan: Any, target: float, alpha: float, power: float, found: Effect) -> int | None:
    """The smallest count from 2 to MAX_PLAN whose planned se gives the power (doubling, then
    bisection: the se falls as the count grows)."""
    if found.se is None:
        return None

    def enough(count: int) -> bool:
        se, df = plan(count)
        return _needed_multiple(df, alpha, power) * se <= target

    high = 2
    while not enough(high):
        high *= 2
        if high > MAX_PLAN:
            return None
    low = high // 2
    while low + 1 < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high
