"""`python -m fashionbg.study calibrate`: the report's own claim evaluation (report.group,
report.evaluate_claims) on simulated studies whose truth is known, with study.yaml's margins
and error rate, to show how often its intervals cover the truth, how often it claims an effect
that is not there (family-wise, under the null), how often it calls an effect just outside the
margin "minimal", and its power at the paper's effect size.

Each simulated study has four arms of one task on the same test images and four claims:
a gain expected positive, an interaction expected negative, a gain expected not positive and
one expected equivalent. A model's per-image correctness is a coin with probability
  p_image + gain_image · [rembg] + model,
where p_image ~ U(0.3, 0.6) (the image's difficulty, shared by every arm), gain_image ~
U(δ − 0.1, δ + 0.1) per arm (images gain unequally; δ is the true gain) and model ~ U(−w, w)
for each trained model (seed × variant). The probabilities stay inside [0, 1], so the true
difference in expected top-1 is exactly δ. Two regimes: w = 0.08 (the seeds vary more than the
test images do) and w = 0.01 (less); the designs the presets run: 2 and 3 seeds, 96 and 1,000
test images (with 2 seeds the report gives no verdict, so only coverage is at stake there).
For mIoU each image holds each of 3 classes with probability 0.7 (50-500 truth pixels); a
model gets each truth pixel right with the same probability as above and paints false pixels
of the class on half of its size times (1 − that probability), so the population mIoU is
q / (1 + (1 − q) / 2) for a mean probability q, and each arm's shift of q is solved for the true
mIoU difference (averaged over the models). For mask AP the same images hold one instance of
each present class; a model finds each with IoU ~ U((1 + 2q) / 4, 1) for the probability q
above, scored the higher the better its IoU, and adds false detections at lower scores; the
matches at each IoU threshold make a MaskAP as pycocotools' would (MaskAP.from_categories), so
the report's own resampled mask AP is what is calibrated. Its population value is not
analytic: each arm's shift of q is solved for the true mask AP difference on a large seeded
simulation (_mask_ap_shift). Every rate is printed with its Monte-Carlo standard error
sqrt(r (1 − r) / n).
"""
from __future__ import annotations

import functools
import gc
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import optimize

from fashionbg.segment.detections import IOU_THRESHOLDS, Category, MaskAP
from fashionbg.study.plan.definition import Arm, Claim, Study, load_study
from fashionbg.study.read import stats
from fashionbg.study.read.report import ClaimResult, arm_gain, evaluate_claims, group
from fashionbg.study.read.results import CellResult
from fashionbg.study.read.sequential import read_sequentially

DESIGNS = ((2, 96), (3, 96), (2, 1000), (3, 1000))   # (seeds, test images) of the presets
SEQUENTIAL_DESIGNS = ((5, 96), (5, 1000))   # the paper preset's 5 seeds: looks at 3 and 5
LARGE = 3   # the large effect of the sequential calibration, in planned effects
REGIMES = {"seeds vary more than images": 0.08, "seeds vary less than images": 0.01}
METRICS = {"top1": "classify", "miou": "semantic", "mask_ap": "instance"}   # metric → its task
MINIMAL_CALLS = {"positive": stats.MINIMAL, "negative": stats.MINIMAL,
                 "not_positive": stats.SUPPORTED, "equivalent": stats.SUPPORTED}
CLASSES, PRESENT, FALSE_SHARE = 3, 0.7, 0.5   # classes, P(class in an image), see below
MEAN_DIFFICULTY = 0.45                        # the mean of U(0.3, 0.6)
# Mask AP's population value: one model's mask AP on POPULATION images (the same seeded draws
# for every shift), averaged over models at the 2-point Gauss nodes (exact for a cubic in the
# model term); on 4 other seeds the solved shifts gave within ±0.0004 of each difference
POPULATION, POPULATION_SEED = 200_000, 0
MODEL_NODES = np.polynomial.legendre.leggauss(2)[0]   # ±1/√3, equal weights


def calibration_study(declared: Study, seeds: int, metric: str = "top1") -> Study:
    """Four arms and four claims with the declared margins and error rate."""
    arms = {name: Arm(name, METRICS[metric], name, {}) for name in ("base", "combined", "flat",
                                                                       "even")}
    claims = [Claim("gain", "gain", "gain", "base", None, "positive"),
              Claim("combine", "combine", "interaction", "combined", "base", "negative"),
              Claim("flat", "flat", "gain", "flat", None, "not_positive"),
              Claim("even", "even", "gain", "even", None, "equivalent")]
    preset = {"seeds": list(range(seeds)), "arms": {name: {} for name in arms}}
    return replace(declared, arms=arms, claims=claims, presets={"sim": preset},
                   variants=["original", "rembg"])


def scenarios(study: Study, metric: str = "top1") -> dict[str, dict[str, float]]:
    """The true gain of each arm in the metric: no effect anywhere; the paper's effect on the
    base arm (which the combined arm lacks); every claim's effect just outside the margin (10 %
    beyond it), where no claim may be called minimal."""
    outside = 1.1 * study.margins[metric]
    return {"null": dict.fromkeys(study.arms, 0.0),
            "paper effect": {"base": study.target_effect, "combined": 0.0, "flat": 0.0,
                             "even": 0.0},
            "just outside the margin": {"base": outside, "combined": 0.0, "flat": outside,
                                        "even": outside}}


def _miou_of(success: np.ndarray) -> np.ndarray:
    """A model's population mIoU when it gets each truth pixel right with mean probability
    `success` and paints FALSE_SHARE × (1 − success) of the class's size on other pixels:
    E[intersection] / E[union] = q / (1 + FALSE_SHARE (1 − q)), the same for every class."""
    return success / (1 + FALSE_SHARE * (1 - success))


def shift_for(metric: str, difference: float, spread: float) -> float:
    """The shift of the success probability that moves the metric's population value, averaged
    over models ~ U(−spread, spread), by `difference` (top-1: the difference itself)."""
    if metric == "top1" or (metric == "miou" and difference == 0):
        return difference
    if metric == "mask_ap":
        return _mask_ap_shift(difference, spread)
    models = np.linspace(-spread, spread, 2001)

    def truth(shift: float) -> float:
        return float(np.mean(_miou_of(MEAN_DIFFICULTY + shift + models)
                             - _miou_of(MEAN_DIFFICULTY + models)))

    return float(optimize.brentq(lambda s: truth(s) - difference, -0.3, 0.3, xtol=1e-12))


@functools.lru_cache(maxsize=32)   # a simulation: once per scenario and regime
def _mask_ap_shift(difference: float, spread: float) -> float:
    """As shift_for, from simulated population values: mask AP depends on how the success
    probability spreads over the images, not on its mean alone, so even no difference needs a
    shift (the rembg images' gains spread it)."""
    models = np.unique(spread * MODEL_NODES)   # one where spread is 0
    base = _mask_ap_population(None, models)
    return float(optimize.brentq(lambda s: _mask_ap_population(s, models) - base - difference,
                                 -0.3, 0.3, xtol=1e-4))


def _mask_ap_population(shift: float | None, models: np.ndarray, seed: int = POPULATION_SEED
                        ) -> float:
    """The mean mask AP of the models on POPULATION images: original (None), or rembg with
    the images' gains ~ U(shift − 0.1, shift + 0.1), as simulate() draws them."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.3, 0.6, POPULATION)
    unequal = rng.uniform(-0.1, 0.1, POPULATION)   # drawn either way: the same images
    gain = 0.0 if shift is None else shift + unequal
    instances = rng.random((POPULATION, CLASSES)) < PRESENT
    ones = np.ones(POPULATION)
    return float(np.mean([_detections(instances, difficulty + gain + m,
                                      np.random.default_rng(seed + 1)).score(ones)
                          for m in models]))


def _detections(instances: np.ndarray, quality: np.ndarray, rng: np.random.Generator
                ) -> MaskAP:
    """One model's mask AP on images holding instances (N, classes) of each class: each
    instance is found with IoU ~ U((1 + 2q) / 4, 1) for its image's quality q (its success
    probability, as the other metrics have it), at a score the mean of that IoU and U(0, 1)
    (better masks score higher), and matches at every IoU threshold it reaches; each image adds
    a false detection of each class with probability FALSE_SHARE × (1 − q) at a score
    ~ U(0, 0.5)."""
    categories = []
    for present in instances.T:
        found = np.flatnonzero(present)
        low = (1 + 2 * quality[found]) / 4
        iou = low + (1 - low) * rng.random(len(found))
        false = np.flatnonzero(rng.random(len(quality)) < FALSE_SHARE * (1 - quality))
        scores = np.concatenate([(iou + rng.random(len(found))) / 2,
                                 rng.uniform(0, 0.5, len(false))])
        matched = (np.concatenate([iou, np.zeros(len(false))])[None]
                   >= IOU_THRESHOLDS[:, None])
        categories.append(Category.ranked(scores, np.concatenate([found, false]), matched,
                                          ~matched, present.astype(float)))
    return MaskAP.from_categories(len(quality), categories)


def simulate(study: Study, gains: dict[str, float], spread: float, images: int,
             rng: np.random.Generator, metric: str = "top1") -> list[CellResult]:
    """One study's cells: per arm, variant and seed, 0/1 correctness (top-1), per-class
    intersection, union and truth pixels (mIoU) or detections (mask AP) on the same images.
    `gains` are true differences in the metric."""
    names = tuple(f"images/{i:04d}.jpg" for i in range(images))
    difficulty = rng.uniform(0.3, 0.6, images)
    shifts = {name: shift_for(metric, g, spread) for name, g in gains.items()}
    per_image_gain = {name: rng.uniform(s - 0.1, s + 0.1, images) for name, s in shifts.items()}
    truth = (rng.integers(50, 500, (images, CLASSES))
             * (rng.random((images, CLASSES)) < PRESENT))
    results = []
    for cell in study.cells("sim"):
        p = (difficulty + per_image_gain[cell.arm.name] * (cell.variant == "rembg")
             + rng.uniform(-spread, spread))
        found, score = _model(metric, p, truth, rng)
        results.append(CellResult(cell, score, None, found, names, {cell.variant: score},
                                  {cell.variant: found}))
    return results


def _model(metric: str, p: np.ndarray, truth: np.ndarray, rng: np.random.Generator
           ) -> tuple[np.ndarray | MaskAP, float]:
    """One trained model's per-image results at success probabilities p, and its score."""
    if metric == "mask_ap":   # an instance wherever the class has truth pixels
        detections = _detections(truth > 0, p, rng)
        return detections, detections.score(np.ones(len(p)))
    if metric == "top1":
        correct = (rng.random(len(p)) < p) * 1.0
        return correct, float(correct.mean())
    hit = rng.binomial(truth, p[:, None])
    false = rng.binomial(np.round(FALSE_SHARE * truth).astype(int), 1 - p[:, None])
    terms = np.stack([hit, truth + false, truth], axis=-1).astype(float)
    return terms, stats.score(terms[None])


def truth_of(r: ClaimResult, gains: dict[str, float]) -> float:
    c = r.claim
    return gains[c.arm] - (gains[c.baseline] if c.baseline else 0.0)


def false_verdict(r: ClaimResult, truth: float) -> bool:
    """A verdict the truth contradicts (a claim 'shown' on the wrong side of a test's null)."""
    expect, verdict, margin = r.claim.expect, r.verdict, r.margin
    if verdict == stats.MINIMAL or (verdict == stats.SUPPORTED and expect == "equivalent"):
        return abs(truth) >= margin
    if expect in ("positive", "negative"):
        sign = 1 if expect == "positive" else -1
        return ((verdict == stats.SUPPORTED and sign * truth <= 0)
                or (verdict == stats.REFUTED and sign * truth >= 0))
    if expect == "not_positive":
        return ((verdict == stats.SUPPORTED and truth >= margin)
                or (verdict == stats.REFUTED and truth <= margin))
    return verdict == stats.REFUTED and abs(truth) <= margin


@dataclass
class Tally:
    covered: int = 0
    intervals: int = 0
    studies: int = 0
    false_claims: dict[str, int] = field(default_factory=dict)   # scenario: studies with any
    minimal_called: int = 0       # outside the margin: a claim called minimal
    minimal_claims: int = 0
    detected: int = 0             # paper effect: the positive claim supported
    powered: int = 0


def run_study(study: Study, scenario: str, gains: dict[str, float], spread: float,
              images: int, rng: np.random.Generator, tally: Tally, metric: str = "top1"
              ) -> None:
    arms = group(simulate(study, gains, spread, images, rng, metric))
    results = evaluate_claims(study, "sim", arms, {n: arm_gain(a) for n, a in arms.items()})
    tally.studies += 1
    for r in results:
        assert r.effect is not None  # every arm of the simulated study runs
        interval = r.effect.interval
        assert interval.low is not None and interval.high is not None  # several seeds
        tally.intervals += 1
        tally.covered += interval.low <= truth_of(r, gains) <= interval.high
    tally.false_claims[scenario] = tally.false_claims.get(scenario, 0) + any(
        false_verdict(r, truth_of(r, gains)) for r in results)
    if scenario == "just outside the margin":
        outside = [r for r in results if abs(truth_of(r, gains)) >= r.margin]
        tally.minimal_claims += len(outside)
        tally.minimal_called += sum(r.verdict == MINIMAL_CALLS[r.claim.expect]
                                    for r in outside)
    if scenario == "paper effect":
        tally.powered += 1
        tally.detected += next(r.verdict == stats.SUPPORTED for r in results
                               if r.claim.id == "gain")


@dataclass(frozen=True)
class Rate:
    rate: float
    n: int

    def __str__(self) -> str:
        error = np.sqrt(self.rate * (1 - self.rate) / self.n)
        return f"{self.rate:.1%} ± {error:.1%}"


@dataclass(frozen=True)
class Calibration:
    metric: str
    design: tuple[int, int]
    regime: str
    coverage: Rate
    fwer: dict[str, Rate]        # per scenario
    false_minimal: Rate
    power: Rate
    studies: int


def calibrate(studies: int, declared: Study | None = None, seed: int = 0,
              designs: tuple[tuple[int, int], ...] = DESIGNS,
              metrics: tuple[str, ...] = tuple(METRICS)) -> list[Calibration]:
    """`studies` simulated studies per scenario, metric, design and regime."""
    declared = declared or load_study()
    rng = np.random.default_rng(seed)
    gc.freeze()   # statsmodels' Holm calls gc.collect(): keep it from walking torch's objects
    out = []
    for metric in metrics:
        for seeds, images in designs:
            study = calibration_study(declared, seeds, metric)
            for regime, spread in REGIMES.items():
                out.append(_calibrate_one(study, metric, (seeds, images), regime, spread,
                                          studies, rng))
    return out


def _calibrate_one(study: Study, metric: str, design: tuple[int, int], regime: str,
                   spread: float, studies: int, rng: np.random.Generator) -> Calibration:
    tally = Tally()
    for scenario, gains in scenarios(study, metric).items():
        for _ in range(studies):
            run_study(study, scenario, gains, spread, design[1], rng, tally, metric)
    return Calibration(
        metric, design, regime, Rate(tally.covered / tally.intervals, tally.intervals),
        {s: Rate(n / studies, studies) for s, n in tally.false_claims.items()},
        Rate(tally.minimal_called / tally.minimal_claims, tally.minimal_claims),
        Rate(tally.detected / tally.powered, tally.powered), tally.studies)


def table(rows: list[Calibration], study: Study) -> str:
    names = list(rows[0].fwer) if rows else []
    lines = [f"α = {study.alpha:g}, margins Δ = {study.margins['top1']:g} (top-1, 0/1 "
             f"correctness), {study.margins['miou']:g} (mIoU from intersections and unions) and "
             f"{study.margins['mask_ap']:g} (mask AP from scored detections matched per IoU "
             "threshold); goals: coverage 93-97 %, family-wise false claims ≤ 5 % and false "
             "'minimal' ≤ 5 % in every scenario; rates ± Monte-Carlo standard error. No verdict "
             f"below {stats.MIN_SEEDS} seeds.", "",
             "| metric | seeds | test images | regime | studies | coverage of the 95 % CIs | "
             + " | ".join(f"family-wise false claims ({n})" for n in names)
             + " | 'minimal' at 1.1 Δ | power at δ = "
             f"{study.target_effect:g} |",
             "|---|---|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        lines.append(f"| {r.metric} | {r.design[0]} | {r.design[1]:,} | {r.regime} | "
                     f"{r.studies} | {r.coverage} | "
                     + " | ".join(str(r.fwer[n]) for n in names)
                     + f" | {r.false_minimal} | {r.power} |")
    return "\n".join(lines)


def sequential_scenarios(study: Study, metric: str = "top1") -> dict[str, dict[str, float]]:
    """The null and the paper's effect as for the fixed design, and a large effect (LARGE
    planned effects) on every claim, each far on the side of its verdict: the gain positive,
    the interaction negative, the flat and the even gain refuted, where a study can stop
    early."""
    large = LARGE * study.target_effect
    fixed = scenarios(study, metric)
    return {"null": fixed["null"], "paper effect": fixed["paper effect"],
            "large effect": {"base": large, "combined": 0.0, "flat": large, "even": large}}


@dataclass(frozen=True)
class Mean:
    """A mean over simulated studies with its Monte-Carlo standard error."""
    mean: float
    error: float

    @classmethod
    def of(cls, values: list[float]) -> Mean:
        return cls(float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values))))

    def __str__(self) -> str:
        return f"{self.mean:.1%} ± {self.error:.1%}"


@dataclass(frozen=True)
class SequentialCalibration:
    metric: str
    design: tuple[int, int]
    regime: str
    looks: list[int]             # seeds at each look
    fwer: dict[str, Rate]        # per scenario: any false verdict over all looks
    power: Rate                  # paper effect: the positive claim supported at any look
    fixed_power: Rate            # the same studies read once, with every seed, at α
    saved: dict[str, Mean]       # per scenario: share of the fixed design's cells not run
    studies: int


def calibrate_sequential(studies: int, declared: Study | None = None, seed: int = 0,
                         designs: tuple[tuple[int, int], ...] = SEQUENTIAL_DESIGNS,
                         metrics: tuple[str, ...] = tuple(METRICS)
                         ) -> list[SequentialCalibration]:
    """`studies` simulated studies per scenario, metric, design and regime, each read look by
    look as read_sequentially reads a preset, and once with every seed as the fixed design."""
    declared = declared or load_study()
    rng = np.random.default_rng(seed)
    gc.freeze()   # as calibrate()
    out = []
    for metric in metrics:
        for seeds, images in designs:
            study = calibration_study(declared, seeds, metric)
            for regime, spread in REGIMES.items():
                false: dict[str, int] = {}
                saved: dict[str, list[float]] = {}
                detected = fixed_detected = 0
                for scenario, gains in sequential_scenarios(study, metric).items():
                    for _ in range(studies):
                        cells = simulate(study, gains, spread, images, rng, metric)
                        read = read_sequentially(study, "sim", cells)
                        false[scenario] = false.get(scenario, 0) + any(
                            false_verdict(d.result, truth_of(d.result, gains))
                            for d in read.decisions)
                        saved.setdefault(scenario, []).append(read.saved)
                        if scenario == "paper effect":
                            detected += _supported(r.result for r in read.decisions)
                            arms = group(cells)
                            fixed_detected += _supported(evaluate_claims(
                                study, "sim", arms, {n: arm_gain(a) for n, a in arms.items()}))
                out.append(SequentialCalibration(
                    metric, (seeds, images), regime, read.counts,
                    {s: Rate(n / studies, studies) for s, n in false.items()},
                    Rate(detected / studies, studies), Rate(fixed_detected / studies, studies),
                    {s: Mean.of(v) for s, v in saved.items()}, studies * len(false)))
    return out


def _supported(results: Iterable[ClaimResult]) -> bool:
    """The positive gain claim of the simulated study supported."""
    return next(r.verdict == stats.SUPPORTED for r in results if r.claim.id == "gain")


def sequential_table(rows: list[SequentialCalibration], study: Study) -> str:
    names = list(rows[0].fwer) if rows else []
    lines = [f"α = {study.alpha:g} spent over the looks (Lan–DeMets O'Brien–Fleming type), "
             f"margins as declared; large effect: {LARGE} × {study.target_effect:g} on every "
             "claim; goals: family-wise false claims over all looks ≤ 5 % in every scenario; "
             "rates and means ± Monte-Carlo standard error.", "",
             "| metric | seeds at each look | test images | regime | studies | "
             + " | ".join(f"family-wise false claims ({n})" for n in names)
             + f" | power at δ = {study.target_effect:g}: sequential / fixed | "
             + " | ".join(f"cells saved ({n})" for n in names) + " |",
             "|---|---|---|---|---|" + "---|" * (2 * len(names) + 1)]
    for r in rows:
        lines.append(f"| {r.metric} | {', '.join(map(str, r.looks))} | {r.design[1]:,} | "
                     f"{r.regime} | {r.studies} | "
                     + " | ".join(str(r.fwer[n]) for n in names)
                     + f" | {r.power} / {r.fixed_power} | "
                     + " | ".join(str(r.saved[n]) for n in names) + " |")
    return "\n".join(lines)
