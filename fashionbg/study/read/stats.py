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
alone tells the residual term, so it is counted once. Degrees of freedom by Satterthwaite with
the seeds' spread taken at its 80 % upper confidence bound (see Effect.df), never below S − 1
(the fewest any term has; a difference of terms would otherwise let bootstrap noise push them
towards 0). With 2-5 seeds a percentile bootstrap over seeds cannot cover: its
spread is (S − 1)/S of the truth and it has no t quantile. 2,000 image resamples make the
standard error stable to about 1 % (two seeds that agree: p 0.137 at 2,000, 0.135 at 20,000).
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import optimize, special, stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95
RESAMPLES = 2000
MAX_PLAN = 100_000   # the most seeds or images a power calculation looks for
MIN_SEEDS = 3   # fewer seeds: no verdict (with 2, one degree of freedom decides everything)
SPREAD_BOUND = 0.2   # df counts the seeds' spread at its upper (1 − SPREAD_BOUND) bound


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
    bound: float = 1.0     # |δ| can be no larger: 1 for a gain of a 0-1 score, 2 for a
                           # difference of gains; intervals are cut there

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
        """sqrt(seed side + σ²_image/N): the seeds' spread is never replaced by a smaller
        guess (with 3-5 seeds it is often small by chance, and the t on S − 1 df allows for
        that)."""
        if np.isnan(self.spread):
            return None
        return float(np.sqrt(self.seed_side + self.image_var))

    @property
    def seed_side(self) -> float:
        """σ²_seed/S + σ²_residual/(SN): the seeds' spread. Below MIN_SEEDS (no verdict) its
        one degree of freedom lets two seeds that agree by chance give a spread far below the
        residual term it holds, so the seed component is floored at zero there (the spread
        lifted to the residual term); from MIN_SEEDS on the plain spread, whose t-interval
        the calibration shows covering 93-97 % (lifting it there covers 99-100 % where the
        seeds vary less than the images)."""
        return self.spread if self.seeds >= MIN_SEEDS else max(self.spread, self.residual)

    @property
    def df(self) -> float | None:
        """Satterthwaite for se² = seed side (S − 1 degrees of freedom) + joint (N − 1) −
        residual ((S − 1)(N − 1)), the last two only where the image term is positive; the
        seed side counted at its 80 % upper confidence bound, since with 2-4 degrees of freedom
        it is often far below its truth by chance, and the plain formula then takes the image
        term for nearly all of se² and jumps towards N − 1 degrees of freedom just when se is
        too small (3 seeds, 96 images, mIoU: 2.3 % of null tests below p = 0.00625, four times
        too many; the calibration chose 80 %: 95 % covered up to 99 %); never below S − 1, the
        fewest any term has."""
        if self.se is None:
            return None
        terms = [(upper_bound(self.seed_side, self.seeds - 1), self.seeds - 1)]
        if self.joint > self.residual:
            terms += [(self.joint, self.images - 1),
                      (self.residual, (self.seeds - 1) * (self.images - 1))]
        return satterthwaite(terms[0][0] + self.image_var, terms, self.seeds - 1)

    def interval_at(self, level: float) -> Interval:
        if self.se is None:
            return Interval(self.estimate, None, None)
        half = float(stats.t.ppf((1 + level) / 2, self.df)) * self.se
        return Interval(self.estimate, max(self.estimate - half, -self.bound),
                        min(self.estimate + half, self.bound))

    @property
    def interval(self) -> Interval:
        return self.interval_at(LEVEL)

    @property
    def testable(self) -> bool:
        """Whether a test means anything: a standard error (two seeds or more) that is not 0.
        Scores that do not vary at all (every seed and test image alike: models that learned
        nothing, such as a smoke run's one epoch) would give p = 0 for any difference."""
        return bool(self.se)

    def p_value(self, null: float = 0.0, alternative: str = "two-sided") -> float | None:
        """p of H0: δ = null against δ ≠ null, δ < null ("less") or δ > null ("greater");
        None where the effect is not testable."""
        se = self.se
        if not se:   # not testable
            return None
        t = (self.estimate - null) / se
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
    return np.array([m.scores(weights) for m in per_image])


def stack(per_seed: list[Any]) -> Any:
    """One variant's per-image results of several seeds in the layout seed_scores takes:
    arrays stacked (seeds first), MaskAPs listed."""
    return np.stack(per_seed) if isinstance(per_seed[0], np.ndarray) else list(per_seed)


def score(per_image: Any) -> float:
    """The task metric on all test images, averaged over seeds."""
    return float(seed_scores(per_image, np.ones((1, image_count(per_image)))).mean())


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


def resampled(per_image: Any, resamples: int = RESAMPLES) -> np.ndarray:
    """(seeds, 1 + resamples): each seed's metric on all test images, then on the bootstrap
    resamples every variant shares."""
    return seed_scores(per_image, image_weights(image_count(per_image), resamples))


def gain(rembg: Any, original: Any, resamples: int = RESAMPLES) -> Effect:
    """rembg − original of one arm, from per-image results of the same seeds and images."""
    return effect(resampled(rembg, resamples) - resampled(original, resamples),
                  image_count(original))


def interaction(arm: tuple[Any, Any], base: tuple[Any, Any], resamples: int = RESAMPLES
                ) -> Effect:
    """gain(arm) − gain(base) on the same test images, seeds paired by position."""
    seeds = min(len(arm[0]), len(base[0]))
    images = image_count(arm[0])
    weights = image_weights(images, resamples)
    rembg_a, original_a, rembg_b, original_b = (seed_scores(x[:seeds], weights)
                                                for x in (*arm, *base))
    return resampled_interaction((rembg_a, original_a), (rembg_b, original_b), images)


def resampled_interaction(arm: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray],
                          images: int) -> Effect:
    """The same from each variant's resampled scores (seeds, 1 + resamples), as gains already
    hold them (mask AP need not be recomputed)."""
    seeds = min(len(arm[0]), len(base[0]))
    rembg_a, original_a, rembg_b, original_b = (x[:seeds] for x in (*arm, *base))
    return replace(effect(rembg_a - original_a - rembg_b + original_b, images), bound=2.0)


def image_count(per_image: Any) -> int:
    return per_image.shape[1] if isinstance(per_image, np.ndarray) else per_image[0].images


def seed_gain(rembg: list[float], original: list[float]) -> Effect:
    """rembg − original from one score per seed (paired by seed): a paired t-test."""
    return _seed_effect(np.asarray(rembg) - np.asarray(original))


def seed_interaction(arm: tuple[list[float], list[float]],
                     base: tuple[list[float], list[float]]) -> Effect:
    n = min(len(arm[0]), len(base[0]))
    return replace(_seed_effect(np.asarray(arm[0][:n]) - np.asarray(arm[1][:n])
                                - np.asarray(base[0][:n]) + np.asarray(base[1][:n])), bound=2.0)


def _seed_effect(differences: np.ndarray) -> Effect:
    found = effect(np.asarray(differences, float)[:, None], 0)
    return replace(found, test="paired t-test over seeds")


def holm(pvalues: Sequence[float], alpha: float) -> list[float]:
    """Holm-adjusted p-values (statsmodels); reject where adjusted p < alpha."""
    if not pvalues:
        return []
    return [float(p) for p in multipletests(list(pvalues), alpha=alpha, method="holm")[1]]


def seed_level(scores: list[float]) -> Effect:
    """One variant's score from one score per seed (no per-image results)."""
    return _seed_effect(np.asarray(scores, float))


def score_interval(found: Effect, level_: float = LEVEL) -> Interval:
    """The interval of a score between 0 and 1: the t-interval on the logit scale (delta
    method) mapped back, so it stays inside [0, 1]; a score of exactly 0 or 1 with spread
    keeps the t-interval cut at the bound."""
    m, se = found.estimate, found.se
    if se is None or found.df is None:
        return Interval(m, None, None)
    if not 0 < m < 1:
        plain = found.interval_at(level_)
        assert plain.low is not None and plain.high is not None  # an se gives both
        return Interval(m, max(plain.low, 0.0), min(plain.high, 1.0))
    half = float(stats.t.ppf((1 + level_) / 2, found.df)) * se / (m * (1 - m))
    centre = float(np.log(m / (1 - m)))
    return Interval(m, float(special.expit(centre - half)), float(special.expit(centre + half)))


@dataclass(frozen=True)
class Wins:
    """Seeds whose rembg model beats the original model of the same seed."""
    wins: int
    seeds: int
    p: float | None    # exact sign-flip test over the seeds (ties left out), two-sided


def paired_wins(rembg: list[float], original: list[float]) -> Wins:
    """P(rembg > original) estimated within seeds, the pairs the study made, with the exact
    permutation p that respects them: under no effect each seed's sign is a coin (a binomial
    sign test of the untied seeds). With 3 seeds all winning, p = 0.25."""
    diff = np.asarray(rembg, float) - np.asarray(original, float)
    wins, untied = int((diff > 0).sum()), int((diff != 0).sum())
    p = float(stats.binomtest(wins, untied).pvalue) if untied else None
    return Wins(wins, len(diff), p)


SUPPORTED, REFUTED, MINIMAL, INCONCLUSIVE = "supported", "refuted", "minimal", "inconclusive"
VERDICTS = (SUPPORTED, REFUTED, MINIMAL, INCONCLUSIVE)   # no word contains another


@dataclass(frozen=True)
class Test:
    """One test that can decide a claim: what it shows and what a rejection decides."""
    name: str
    decides: str
    p: float


def claim_tests(found: Effect, expect: str, margin: float) -> list[Test]:
    """The tests that can decide a claim, in the order they decide (the first one rejected at
    its Holm-adjusted p wins):
    positive: TOST −Δ < δ < +Δ decides *minimal* (a gain shown smaller than Δ is no support),
      then δ ≠ 0 (two-sided) decides *supported* or, with the estimate below 0, *refuted*;
    negative: the same, mirrored;
    not_positive: non-superiority δ < +Δ decides *supported*, δ > +Δ *refuted*;
    equivalent: TOST decides *supported*, |δ| > Δ (the smaller one-sided p, doubled) *refuted*.
    Empty where the effect is not testable (one seed, or scores that do not vary)."""
    if not found.testable:
        return []

    def p(null: float, alternative: str = "two-sided") -> float:
        value = found.p_value(null, alternative)
        assert value is not None  # the effect is testable, so every p
        return value

    tost = max(p(-margin, "greater"), p(margin, "less"))
    sign = found.estimate > 0
    if expect in ("positive", "negative"):
        expected = sign == (expect == "positive")
        return [Test("TOST −Δ < δ < +Δ", MINIMAL, tost),
                Test("δ ≠ 0", SUPPORTED if expected else REFUTED, p(0.0))]
    if expect == "not_positive":
        return [Test("non-superiority δ < +Δ", SUPPORTED, p(margin, "less")),
                Test("δ > +Δ", REFUTED, p(margin, "greater"))]
    outside = min(1.0, 2 * min(p(margin, "greater"), p(-margin, "less")))
    return [Test("TOST −Δ < δ < +Δ", SUPPORTED, tost), Test("|δ| > Δ", REFUTED, outside)]


def decide(tests: list[Test], adjusted: list[float], alpha: float) -> tuple[str, int | None]:
    """The verdict and the index of the test that decides it (None: inconclusive, shown with
    the claim's own supporting test)."""
    for i, (test, q) in enumerate(zip(tests, adjusted)):
        if q < alpha:
            return test.decides, i
    return INCONCLUSIVE, None


def power_at(delta: float, se: float, df: float, alpha: float) -> float:
    """The power of the two-sided level-alpha t-test at true |δ| = delta: the noncentral t
    with noncentrality delta / se beyond ±t(1 − alpha/2, df)."""
    if se == 0:
        return 1.0 if delta > 0 else alpha
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    shift = delta / se
    # the far tail underflows to nan in scipy where it is below about 1e-60
    far = float(np.nan_to_num(stats.nct.cdf(-critical, df, shift), nan=0.0))
    return float(stats.nct.sf(critical, df, shift)) + far


def detectable(found: Effect, alpha: float, power: float) -> float | None:
    """The smallest |δ| the two-sided level-alpha test finds with probability `power`
    (noncentral t; the central-t shortcut t(1 − α/2) + t(power) is 5 % too small at df 2)."""
    se, df = found.se, found.df
    if not se or df is None:  # not testable (se and df: both or neither)
        return None
    high = se
    while power_at(high, se, df, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda d: power_at(d, se, df, alpha) - power, 0.0, high,
                                 xtol=1e-12 * high))


def _planned_se(found: Effect, seeds: float, images: float) -> tuple[float, float]:
    """se and df (as Effect.df has them) of the same design with `seeds` seeds and `images`
    images: σ²_seed/S, σ²_image/N and σ²_residual/(SN) rescaled, each with its own degrees of
    freedom (seeds = inf: the limit where only the images vary)."""
    s, n = found.seeds, max(found.images, 1)
    seed, image, residual = (found.seed_var * s / seeds, found.image_var * n / images,
                             found.residual * s * n / (seeds * images))
    terms = [(upper_bound(seed + residual, seeds - 1), seeds - 1), (image + residual, images - 1),
             (residual, (seeds - 1) * (images - 1))]
    return (float(np.sqrt(seed + image + residual)),
            satterthwaite(terms[0][0] + image, terms, seeds - 1))


def upper_bound(variance: float, df: float) -> float:
    """The one-sided (1 − SPREAD_BOUND) upper confidence bound of a variance estimated on `df`
    degrees of freedom (itself where df is infinite)."""
    if not np.isfinite(df) or df <= 0:
        return variance
    return variance * df / float(stats.chi2.ppf(SPREAD_BOUND, df))


def satterthwaite(total: float, terms: Sequence[tuple[float, float]], floor: float) -> float:
    """Satterthwaite's degrees of freedom of `total` from its (variance, df) terms, never below
    `floor`."""
    denominator = sum(term ** 2 / f for term, f in terms if term and f > 0)
    return float(max(total ** 2 / denominator, floor)) if denominator > 0 else float(floor)


UNREACHABLE = -1   # seeds_needed: no number of seeds is enough at this many test images


def seeds_needed(found: Effect, target: float, alpha: float, power: float) -> int | None:
    """Seeds (at this many test images, never fewer than MIN_SEEDS: no verdict below) for
    power `power` at |δ| = target; UNREACHABLE where even infinitely many seeds are not
    enough (the test images' own variance is too large); None if more than MAX_PLAN or not
    known (or not testable)."""
    if not found.testable:
        return None
    images = max(found.images, 1)
    se, df = _planned_se(found, np.inf, images)
    if found.images and se > 0 and power_at(target, se, df, alpha) < power:
        return UNREACHABLE
    return _search(lambda s: _planned_se(found, s, images), target, alpha, power, MIN_SEEDS)


def images_needed(found: Effect, target: float, alpha: float, power: float, least: int = 2
                  ) -> int | None:
    """Test images (at this many seeds) for the same, never fewer than `least` (a ratio
    metric such as mIoU or mask AP is not extrapolated below it); None where no number of
    images is enough (the seeds' variance alone is too large) or there are no per-image
    results (or the effect is not testable)."""
    if found.images == 0 or not found.testable:
        return None
    return _search(lambda n: _planned_se(found, found.seeds, n), target, alpha, power, least)


def _search(plan: Any, target: float, alpha: float, power: float, least: int) -> int | None:
    """The smallest count from `least` to MAX_PLAN whose planned design has the power
    (doubling, then bisection: the se falls as the count grows)."""
    def enough(count: int) -> bool:
        se, df = plan(count)
        return power_at(target, se, df, alpha) >= power

    if enough(least):
        return least
    high = least
    while not enough(high):
        high *= 2
        if high > MAX_PLAN:
            return None
    low = high // 2
    while low + 1 < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high
