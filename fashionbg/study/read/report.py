"""The study report, built from the experiments alone: per arm the metric per variant over
seeds, the paired difference rembg − original, the cross-variant scores, the interactions the
claims are about, a verdict per claim and how much the models rely on the background
(backgrounds.py); as reports/study.md, a forest plot and a CSV that `dvc plots` draws, and as
the README's results section."""
from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from fashionbg.contracts.tasks import TASKS
from fashionbg.core.errors import UserError
from fashionbg.core.io import atomic_file, write_csv
from fashionbg.study.plan.definition import Arm, Claim, Study
from fashionbg.study.read import backgrounds, stats
from fashionbg.study.read.results import CellResult, known

REPORT = Path("reports/study.md")      # a preset's `report:` names another; its figures go
FOREST, DIFFERENCES = "forest.png", "differences.csv"   # to the folder of the same name
README = Path("README.md")
README_MARKERS = ("<!-- study:begin -->", "<!-- study:end -->")


@dataclass(frozen=True)
class ArmResults:
    arm: Arm
    seeds: list[int]                        # seeds with both variants present, in order
    scores: dict[str, list[float]]          # variant → score per seed
    cross: dict[str, list[float | None]]    # trained on variant → score on the other variant
    per_image: dict[str, Any] | None        # variant → stats.stack of the seeds' results

    @functools.cached_property
    def resampled(self) -> dict[str, np.ndarray] | None:
        """variant → stats.resampled scores, computed once for the gain, the interactions and
        both variants' intervals (recomputing mask AP is the slow part of a report)."""
        if self.per_image is None:
            return None
        return {v: stats.resampled(x) for v, x in self.per_image.items()}

    @property
    def images(self) -> int:
        return 0 if self.per_image is None else stats.image_count(self.per_image["original"])


def group(results: list[CellResult]) -> dict[str, ArmResults]:
    """Per arm, the seeds with both variants, paired by seed and by test image."""
    by_arm: dict[str, dict[tuple[str, int], CellResult]] = defaultdict(dict)
    for r in results:
        by_arm[r.cell.arm.name][(r.cell.variant, r.cell.seed)] = r
    grouped = {}
    for name, cells in by_arm.items():
        seeds = sorted({s for (_, s) in cells if ("original", s) in cells and ("rembg", s) in cells
                        and all(cells[(v, s)].score is not None for v in ("original", "rembg"))})
        if not seeds:
            continue
        pick = {v: [cells[(v, s)] for s in seeds] for v in ("original", "rembg")}
        per_image = None
        first = pick["original"][0]
        if first.per_image is not None and all(
                c.images == first.images for v in pick for c in pick[v]):
            per_image = {v: stats.stack([c.per_image for c in pick[v]]) for v in pick}
        grouped[name] = ArmResults(first.cell.arm, seeds,
                                   {v: [known(c.score) for c in pick[v]] for v in pick},
                                   {v: [c.cross for c in pick[v]] for v in pick}, per_image)
    return grouped


def arm_gain(a: ArmResults) -> stats.Effect:
    if a.resampled is not None:
        return stats.effect(a.resampled["rembg"] - a.resampled["original"], a.images)
    return stats.seed_gain(a.scores["rembg"], a.scores["original"])


def claim_effect(claim: Claim, arms: dict[str, ArmResults], gains: dict[str, stats.Effect]
                 ) -> stats.Effect | None:
    if claim.arm not in arms or (claim.test == "interaction" and claim.baseline not in arms):
        return None
    if claim.test == "gain":
        return gains[claim.arm]
    assert claim.baseline is not None  # the study definition requires it of an interaction
    arm, base = arms[claim.arm], arms[claim.baseline]
    if arm.resampled is not None and base.resampled is not None:
        return stats.resampled_interaction((arm.resampled["rembg"], arm.resampled["original"]),
                                           (base.resampled["rembg"], base.resampled["original"]),
                                           arm.images)
    return stats.seed_interaction((arm.scores["rembg"], arm.scores["original"]),
                                  (base.scores["rembg"], base.scores["original"]))


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    effect: stats.Effect | None
    margin: float
    test: str                # the test that decides the verdict, or the claim's own one
    p: float | None          # that test's p, unadjusted
    adjusted: float | None   # the same, Holm-adjusted over every test of the preset's claims
    verdict: str             # one of stats.VERDICTS


# The test an inconclusive row shows: the one whose rejection would support the claim.
OWN_TEST = {"positive": 1, "negative": 1, "not_positive": 0, "equivalent": 0}
TOO_FEW = f"fewer than {stats.MIN_SEEDS} seeds: no verdict"
NO_SPREAD = "every score alike: no test"


def evaluate_claims(study: Study, preset: str, arms: dict[str, ArmResults],
                    gains: dict[str, stats.Effect]) -> list[ClaimResult]:
    """Each claim of the preset's arms: its effect, the tests that can decide it (Holm across
    all of them, so every decisive test is inside the family-wise error rate) and its
    verdict. A claim with fewer than stats.MIN_SEEDS seeds gets no tests and no verdict."""
    ran = set(study.presets[preset]["arms"])
    claims = [c for c in study.claims if {c.arm, c.baseline or c.arm} <= ran]
    effects = [claim_effect(c, arms, gains) for c in claims]
    margins = [study.margins[TASKS[study.arms[c.arm].task].key_metric] for c in claims]
    tests = [stats.claim_tests(e, c.expect, m)
             if e is not None and e.seeds >= stats.MIN_SEEDS else []
             for c, e, m in zip(claims, effects, margins)]
    flat = stats.holm([t.p for ts in tests for t in ts], study.alpha)
    out, start = [], 0
    for c, e, m, ts in zip(claims, effects, margins, tests):
        adjusted, start = flat[start:start + len(ts)], start + len(ts)
        if not ts:   # not run, or too few seeds: the claim's own test, unadjusted, if any
            own = [] if e is None else stats.claim_tests(e, c.expect, m)
            shown = own[OWN_TEST[c.expect]] if own else None
            out.append(ClaimResult(c, e, m, shown.name if shown else untested(e),
                                   shown.p if shown else None, None, stats.INCONCLUSIVE))
            continue
        verdict, i = stats.decide(ts, adjusted, study.alpha)
        i = OWN_TEST[c.expect] if i is None else i
        out.append(ClaimResult(c, e, m, ts[i].name, ts[i].p, adjusted[i], verdict))
    return out


def untested(effect: stats.Effect | None) -> str:
    """Why a claim has no test at all."""
    if effect is None:
        return "not run"
    return TOO_FEW if effect.seeds < stats.MIN_SEEDS else NO_SPREAD


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def fmt_mean(values: list[float | None]) -> str:
    """The mean over seeds; "–" where a seed has no score (np.mean would raise on None)."""
    scores = [v for v in values if v is not None]
    return fmt(float(np.mean(scores)) if len(scores) == len(values) else None)


def fmt_interval(i: stats.Interval, signed: bool = False) -> str:
    if i.low is None:
        return f"{fmt(i.estimate, signed)} (one seed)"
    return f"{fmt(i.estimate, signed)} [{fmt(i.low, signed)}, {fmt(i.high, signed)}]"


def fmt_p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def fmt_count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def arm_table(arms: dict[str, ArmResults], gains: dict[str, stats.Effect], study: Study
              ) -> list[str]:
    lines = ["| arm | task: metric | seeds | original [95 % CI] | rembg [95 % CI] | "
             "rembg − original [95 % CI] | p, unadjusted | seeds where rembg > original: "
             "exact sign test p, unadjusted | original-trained on rembg | "
             "rembg-trained on original |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in study.arms:
        if name not in arms:
            continue
        a, effect = arms[name], gains[name]
        metric = TASKS[a.arm.task].key_metric
        wins = stats.paired_wins(a.scores["rembg"], a.scores["original"])
        levels = [fmt_interval(stats.score_interval(variant_level(a, v)))
                  for v in ("original", "rembg")]
        lines.append(
            f"| `{name}`: {text(a.arm.about)} | {a.arm.task}: {metric} | {len(a.seeds)} | "
            f"{levels[0]} | {levels[1]} | "
            f"**{fmt_interval(effect.interval, True)}** | {fmt_p(effect.p)} | "
            f"{wins.wins} of {wins.seeds}: {fmt_p(wins.p)} | "
            f"{fmt_mean(a.cross['original'])} | {fmt_mean(a.cross['rembg'])} |")
    return lines


def variant_level(a: ArmResults, variant: str) -> stats.Effect:
    """A variant's score over seeds and test images where per-image results pair them, else
    over seeds: the footing its arm's difference stands on."""
    if a.resampled is not None:
        return stats.effect(a.resampled[variant], a.images)
    return stats.seed_level(a.scores[variant])


RATIO_METRICS = ("miou", "mask_ap")   # ratios of sums over images, not means of per-image terms
MIN_RATIO_IMAGES = 100                 # the fewest test images their plan extrapolates down to


def claim_table(claims: list[ClaimResult], study: Study) -> list[str]:
    target = study.target_effect
    lines = ["| claim of the paper | measured as | expect | difference [95 % CI] | "
             "90 % CI | deciding test: p unadjusted (Holm) | verdict | detectable "
             f"({study.power * 100:g} % power) | for ±{target:g}: seeds at these test images "
             "(cells) / test images at these seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in claims:
        claim, effect = r.claim, r.effect
        measured = (f"gain of `{claim.arm}`" if claim.test == "gain"
                    else f"gain of `{claim.arm}` − gain of `{claim.baseline}`")
        expect = f"{claim.expect.replace('_', ' ')}, Δ {r.margin:g}"
        test = (r.test if r.p is None else f"{r.test}: {fmt_p(r.p)} ({TOO_FEW})"
                if r.adjusted is None else f"{r.test}: {fmt_p(r.p)} ({fmt_p(r.adjusted)})")
        if effect is None:
            lines.append(f"| {claim.claim} | {measured} | {expect} | not run | – | {test} | "
                         f"**{r.verdict}** | – | – |")
            continue
        lines.append(
            f"| {claim.claim} | {measured} | {expect} | {fmt_interval(effect.interval, True)} | "
            f"{fmt_interval(effect.interval_at(1 - 2 * study.alpha), True)} | {test} | "
            f"**{r.verdict}** | {fmt(stats.detectable(effect, study.alpha, study.power))} | "
            f"{plan(effect, study, TASKS[study.arms[claim.arm].task].key_metric, claim)} |")
    return lines


def cells_per_seed(claim: Claim) -> int:
    """Cells one more seed costs a claim: original and rembg of its arm (and its baseline)."""
    return 2 if claim.test == "gain" else 4


def plan(effect: stats.Effect, study: Study, metric: str, claim: Claim) -> str:
    """Seeds needed at this test set with the cells they cost (a cell's time hardly depends on
    its test images, so the full test set and the fewest seeds is the cheapest design), and
    test images needed at these seeds, for the target effect; ratio metrics are not
    extrapolated below MIN_RATIO_IMAGES."""
    target, alpha, power = study.target_effect, study.alpha, study.power
    seeds = stats.seeds_needed(effect, target, alpha, power)
    least = MIN_RATIO_IMAGES if metric in RATIO_METRICS else 2
    images = stats.images_needed(effect, target, alpha, power, least)
    seeds_text = ("not reachable with this test set" if seeds == stats.UNREACHABLE
                  else f"> {stats.MAX_PLAN:,}" if seeds is None and effect.testable
                  else f"{seeds:,} ({seeds * cells_per_seed(claim):,} cells)" if seeds
                  else fmt_count(seeds))
    images_text = ("no number" if images is None and effect.images and effect.testable
                   else fmt_count(images))
    if images == least and least > 2:
        images_text = f"≤ {least} (not extrapolated below)"
    return f"{seeds_text} / {images_text}"


def methods(study: Study, preset: str) -> str:
    margins = ", ".join(f"{m} ±{d:g}" for m, d in study.margins.items())
    split = ("Each seed also draws the split (`data.seed`, the preset's split_seeds), so the "
             "test images differ between seeds: each difference is a paired t-test over seeds, "
             "a seed's difference on its own test images, which counts the split, the "
             "training and the images together. " if study.presets[preset].get("split_seeds")
             else "")
    return (
        "**Methods.** Declared in study.yaml before any run: equivalence margins Δ "
        f"({margins}), family-wise error rate α = {study.alpha:g} over the preset's claims, "
        f"power {study.power:g} for the planned effect ±{study.target_effect:g}. "
        "Differences are rembg − original on the same test images, each seed's metric "
        "recomputed on the whole test set (top-1, mIoU from summed intersections and unions, "
        "mask AP by pycocotools from the per-image detections). Its standard error counts both "
        "sources of variation, in the crossed model difference = δ + seed + image + residual: "
        "the spread over seeds (Student t) and a bootstrap over test images "
        f"({stats.RESAMPLES} resamples, the same images for every seed and variant, the metric "
        "recomputed on each), the residual counted once; degrees of freedom by Satterthwaite, "
        f"never below seeds − 1. Below {stats.MIN_SEEDS} seeds no verdict is given (and the "
        "seeds' spread is not allowed below the residual term it holds), nor where every "
        "score is alike (a standard error of 0, e.g. models that learned nothing): no test "
        "and no p there. Intervals of a "
        "difference are cut at the most a difference of scores can be; per-variant scores "
        "have the same standard error (seeds and test images) with the t-interval taken on "
        "the logit scale, so it stays inside [0, 1]. "
        "**Verdicts**, each decided by one test (its raw and Holm-adjusted p in the row; "
        "Holm (statsmodels) runs over every test that can decide any claim of the preset, two "
        "per claim, so every verdict is inside the family-wise error rate; a test decides "
        "when its Holm-adjusted p is below α, so a 90 % CI, which is unadjusted, on the "
        "right side of a margin is not enough on its own): "
        "*supported* — the claim's own test rejects (positive / negative: the two-sided t-test "
        "of δ = 0 with the estimate on the expected side; not positive: non-superiority, "
        "H0 δ ≥ +Δ; equivalent: TOST, H0 |δ| ≥ Δ); "
        "*refuted* — the opposite is shown (positive / negative: the same two-sided test with "
        "the estimate on the other side; not positive: H0 δ ≤ +Δ; "
        "equivalent: |δ| > Δ, the smaller one-sided p doubled); *minimal* — a positive or "
        "negative claim whose effect TOST shows within ±Δ (checked first: a gain shown smaller "
        "than Δ is no support); *inconclusive* — no test rejects at its Holm-adjusted p (the "
        "row then shows the claim's own test). The 'does not combine' claims are interactions "
        "expected negative: removal helps less with batch norm, augmentation or pretraining "
        "than without. Seeds where rembg > original: the seeds whose rembg model beats the "
        "original model of the same seed, with the exact sign-flip test over those pairs "
        "(binomial, ties left out; 3 of 3 gives p 0.25). The p-values of the arm and "
        "background tables are unadjusted. Detectable: the |δ| the two-sided test finds with "
        f"power {study.power:g} (noncentral t); for ±{study.target_effect:g}: the seeds "
        "needed at this test set ('not reachable with this test set' where the test images' "
        "own variance is too large for any number of seeds), and the test images needed at "
        "these seeds ('no number' where the seeds' variance alone is too large; mIoU and "
        f"mask AP are not extrapolated below {MIN_RATIO_IMAGES} images). "
        "`python -m fashionbg.study calibrate` checks the coverage, error rates and power of "
        f"this procedure on simulated studies. {split}")


def forest_plot(rows: list[tuple[str, stats.Interval]], path: Path) -> None:
    """Each difference with its interval, against zero."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, (_, i) in enumerate(reversed(rows)):
        low = i.low if i.low is not None else i.estimate
        high = i.high if i.high is not None else i.estimate
        ax.plot([low, high], [y, y], color="tab:blue", lw=2)
        ax.plot(i.estimate, y, "o", color="tab:blue")
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel("rembg − original (gain), or difference of gains (interaction), 95 % CI")
    ax.set_title("Effect of background removal")
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=150)
    plt.close(fig)


def report_path(study: Study, preset: str) -> Path:
    """reports/study.md, or the preset's own `report:` (which leaves the README alone)."""
    return Path(study.presets[preset].get("report", REPORT))


def build_report(study: Study, preset: str, results: list[CellResult], missing: int,
                 command: str, decided: list[ClaimResult] | None = None,
                 notes: list[str] | None = None) -> str:
    """Write the report files; return the markdown block the README shows. `decided`: the
    claims' verdicts as a sequential reading gave them (else the fixed design's, from every
    seed), with its `notes` under the claims."""
    report = report_path(study, preset)
    figures = report.with_suffix("")
    arms = group(results)
    gains = {name: arm_gain(a) for name, a in arms.items()}
    claims = decided if decided is not None else evaluate_claims(study, preset, arms, gains)
    rows = [(f"{name} gain", e.interval) for name, e in gains.items()]
    rows += [(f"{r.claim.arm} − {r.claim.baseline}", r.effect.interval) for r in claims
             if r.effect is not None and r.claim.test == "interaction"]
    if rows:
        forest_plot(rows, figures / FOREST)
    else:   # no arm has both variants yet: no plot, rather than last time's
        (figures / FOREST).unlink(missing_ok=True)
    write_csv(figures / DIFFERENCES, ("effect", "difference", "low", "high"),
              [(label, i.estimate, i.low, i.high) for label, i in rows])
    block = [f"Preset `{preset}` ({text(study.presets[preset].get('about', ''))}): "
             f"{len(results)} cells read from the experiments, {missing} not run yet. "
             f"Made by `{command}`.", "", *(claim_table(claims, study) + [""] if claims else []),
             *([*notes, ""] if notes else []),
             *arm_table(arms, gains, study)]
    body = ["# Study report", "", *block, "", methods(study, preset), "",
            *([f"![forest plot]({(figures / FOREST).relative_to(report.parent)})", ""]
              if rows else []),
            *backgrounds.section(results, figures, report.parent)]
    with atomic_file(report) as f:
        f.write("\n".join(body))
    return "\n".join(block)


# What study.yaml's free text could do in the README and the report: HTML (a comment hides the
# rest, a second `<!-- study:end -->`), Markdown (a `|` splits a table cell, `[x](url)` links).
_MARKUP = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\",
                         **{c: "\\" + c for c in "`*_[]|~"}})


def text(value: object) -> str:
    """Text from study.yaml as it reads, on one line, wherever Markdown or HTML puts it."""
    return " ".join(str(value).split()).translate(_MARKUP)


def update_readme(block: str, readme: Path = README) -> bool:
    """Replace the README's generated results section; False where it has no markers, and one
    line refusing where they are not exactly one pair (what lies between would be lost)."""
    old = readme.read_text()
    begin, end = README_MARKERS
    counts = (old.count(begin), old.count(end))
    if counts == (0, 0):
        return False
    if counts != (1, 1) or old.index(begin) > old.index(end):
        raise UserError(f"{readme} has {counts[0]} {begin} and {counts[1]} {end} marker(s); "
                        "keep exactly one pair, begin before end, around the study's results "
                        "and re-run the report")
    head, rest = old.split(begin)
    tail = rest.split(end)[1]
    with atomic_file(readme) as f:
        f.write(f"{head}{begin}\n{block}\n{end}{tail}")
    return True
