"""`python -m fashionbg.study calibrate`: the report's own claim evaluation (report.group,
report.evaluate_claims) on simulated studies whose truth is known, with study.yaml's margins
and error rate, to show how often its intervals cover the truth, how often it claims an effect
that is not there (family-wise, under the null), how often it calls an effect just outside the
margin "minimal", and its power at the paper's effect size.

Each simulated study has four classification arms on the same test images and four claims:
a gain expected positive, an interaction expected negative, a gain expected not positive and
one expected equivalent. A model's per-image correctness is a coin with probability
  p_image + gain_image · [rembg] + model,
where p_image ~ U(0.3, 0.6) (the image's difficulty, shared by every arm), gain_image ~
U(δ − 0.1, δ + 0.1) per arm (images gain unequally; δ is the true gain) and model ~ U(−w, w)
for each trained model (seed × variant). The probabilities stay inside [0, 1], so the true
difference in expected top-1 is exactly δ. Two regimes: w = 0.08 (the seeds vary more than the
test images do) and w = 0.01 (less).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, replace

import numpy as np

from fashionbg.study.definition import Arm, Claim, Study, load_study
from fashionbg.study.report import ClaimResult, arm_gain, evaluate_claims, group
from fashionbg.study.results import CellResult

SEEDS, IMAGES = 3, 300
REGIMES = {"seeds vary more than images": 0.08, "seeds vary less than images": 0.01}
DIRECTIONAL = ("positive", "negative")
MINIMAL = ("not_positive", "equivalent")


def calibration_study(declared: Study) -> Study:
    """Four arms and four claims with the declared margins and error rate."""
    arms = {name: Arm(name, "classify", name, {}) for name in ("base", "combined", "flat",
                                                                  "even")}
    claims = [Claim("gain", "gain", "gain", "base", None, "positive"),
              Claim("combine", "combine", "interaction", "combined", "base", "negative"),
              Claim("flat", "flat", "gain", "flat", None, "not_positive"),
              Claim("even", "even", "gain", "even", None, "equivalent")]
    preset = {"seeds": list(range(SEEDS)), "arms": {name: {} for name in arms}}
    return replace(declared, arms=arms, claims=claims, presets={"sim": preset},
                   variants=["original", "rembg"])


def scenarios(study: Study) -> dict[str, dict[str, float]]:
    """The true gain of each arm: no effect anywhere; the paper's effect on the base arm
    (which the combined arm lacks); effects just outside the margin (10 % beyond it) where
    the claims expect a minimal one."""
    outside = 1.1 * study.margins["top1"]
    return {"null": dict.fromkeys(study.arms, 0.0),
            "paper effect": {"base": study.target_effect, "combined": 0.0, "flat": 0.0,
                             "even": 0.0},
            "just outside the margin": {"base": 0.0, "combined": 0.0, "flat": outside,
                                        "even": outside}}


def simulate(study: Study, gains: dict[str, float], spread: float,
             rng: np.random.Generator) -> list[CellResult]:
    """One study's cells: per arm, variant and seed, 0/1 correctness on the same images."""
    images = tuple(f"images/{i:04d}.jpg" for i in range(IMAGES))
    difficulty = rng.uniform(0.3, 0.6, IMAGES)
    per_image_gain = {name: rng.uniform(g - 0.1, g + 0.1, IMAGES) for name, g in gains.items()}
    results = []
    for cell in study.cells("sim"):
        p = (difficulty + per_image_gain[cell.arm.name] * (cell.variant == "rembg")
             + rng.uniform(-spread, spread))
        correct = (rng.random(IMAGES) < p) * 1.0
        results.append(CellResult(cell, float(correct.mean()), None, correct, images,
                                  {cell.variant: float(correct.mean())},
                                  {cell.variant: correct}))
    return results


def truth_of(r: ClaimResult, gains: dict[str, float]) -> float:
    c = r.claim
    return gains[c.arm] - (gains[c.baseline] if c.baseline else 0.0)


@dataclass
class Tally:
    covered: int = 0
    intervals: int = 0
    studies: int = 0
    any_false_claim: int = 0      # null scenario: a directional claim supported or reversed
    minimal_called: int = 0       # outside the margin: a minimal-effect claim supported
    minimal_claims: int = 0
    detected: int = 0             # paper effect: the positive claim supported
    powered: int = 0


def run_study(study: Study, scenario: str, gains: dict[str, float], spread: float,
              rng: np.random.Generator, tally: Tally) -> None:
    arms = group(simulate(study, gains, spread, rng))
    results = evaluate_claims(study, "sim", arms, {n: arm_gain(a) for n, a in arms.items()})
    tally.studies += 1
    for r in results:
        assert r.effect is not None  # every arm of the simulated study runs
        interval = r.effect.interval
        assert interval.low is not None and interval.high is not None  # several seeds
        tally.intervals += 1
        tally.covered += interval.low <= truth_of(r, gains) <= interval.high
    if scenario == "null":
        tally.any_false_claim += any(r.verdict in ("supported", "reversed") for r in results
                                     if r.claim.expect in DIRECTIONAL)
    if scenario == "just outside the margin":
        minimal = [r for r in results if r.claim.expect in MINIMAL]
        tally.minimal_claims += len(minimal)
        tally.minimal_called += sum(r.verdict == "supported" for r in minimal)
    if scenario == "paper effect":
        tally.powered += 1
        tally.detected += next(r.verdict == "supported" for r in results
                               if r.claim.id == "gain")


@dataclass(frozen=True)
class Calibration:
    regime: str
    coverage: float
    fwer: float
    false_equivalence: float
    power: float
    studies: int


def calibrate(studies: int, declared: Study | None = None, seed: int = 0) -> list[Calibration]:
    """`studies` simulated studies per scenario and regime."""
    study = calibration_study(declared or load_study())
    rng = np.random.default_rng(seed)
    gc.freeze()   # statsmodels' Holm calls gc.collect(): keep it from walking torch's objects
    out = []
    for regime, spread in REGIMES.items():
        tally = Tally()
        for scenario, gains in scenarios(study).items():
            for _ in range(studies):
                run_study(study, scenario, gains, spread, rng, tally)
        out.append(Calibration(regime, tally.covered / tally.intervals,
                               tally.any_false_claim / studies,
                               tally.minimal_called / tally.minimal_claims,
                               tally.detected / tally.powered, tally.studies))
    return out


def table(rows: list[Calibration], study: Study) -> str:
    margin = 1.1 * study.margins["top1"]
    lines = [f"{SEEDS} seeds, {IMAGES} test images, α = {study.alpha:g}, Δ = "
             f"{study.margins['top1']:g} (top-1); goals: coverage 93-97 %, FWER ≤ 5 %, "
             "false equivalence ≤ 5 %.", "",
             "| regime | studies | coverage of the 95 % CIs | family-wise false claims "
             f"(null) | 'minimal' at δ = {margin:g} | power at δ = {study.target_effect:g} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.regime} | {r.studies} | {r.coverage:.1%} | {r.fwer:.1%} | "
                     f"{r.false_equivalence:.1%} | {r.power:.1%} |")
    return "\n".join(lines)
