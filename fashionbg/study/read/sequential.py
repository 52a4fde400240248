"""A study read in waves of seeds that stops when it knows: the claims are tested after each
wave (a *look*) with the fixed design's own tests, verdicts and Holm correction, at a level
spent from the preset's α so that the chance of any false claim over all looks stays within α;
a claim is decided at the first look whose test decides it, and an arm stops running seeds when
every claim that uses it is decided (the seeds it would have run are the cells saved).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from scipy.stats import norm

from fashionbg.study.plan.definition import Study
from fashionbg.study.read import stats
from fashionbg.study.read.report import ClaimResult, arm_gain, evaluate_claims, group
from fashionbg.study.read.results import CellResult

WAVE = stats.MIN_SEEDS   # seeds per wave: the first look is at the fewest a verdict is given on


def looks(seeds: int, wave: int = WAVE) -> list[int]:
    """The seed counts tested at: MIN_SEEDS, then every `wave` seeds more, and all `seeds`
    (fewer than MIN_SEEDS: one look, which gives no verdict)."""
    return [*range(stats.MIN_SEEDS, seeds, wave), seeds]


def obrien_fleming(fraction: float, alpha: float) -> float:
    """α spent by information fraction t, Lan–DeMets' O'Brien–Fleming-type function
    2 − 2Φ(z_{1−α/2} / √t): it spends little at the early looks (3 of 5 seeds: 0.011 of 0.05),
    where 2 degrees of freedom for the seeds' spread leave little power anyway, and keeps most
    of α for the last look, so a study that does not stop early loses little against the fixed
    design."""
    if fraction <= 0:
        return 0.0
    return float(2 * norm.sf(norm.isf(alpha / 2) / fraction ** 0.5))


def levels(counts: Sequence[int], alpha: float) -> list[float]:
    """Each look's level: the α spent since the previous look, the information fraction being
    seeds / all seeds (the seeds' spread, which dominates the standard error, falls as 1 /
    seeds). The levels add up to α and the looks are joined by Bonferroni, so the chance of a
    false claim at any look is at most α whatever the looks' dependence: the exact
    group-sequential boundaries assume a normal statistic of known information, which a t on
    2-4 degrees of freedom with Satterthwaite's df is not."""
    spent = [obrien_fleming(n / counts[-1], alpha) for n in counts]
    return [now - before for before, now in zip([0.0, *spent], spent)]


@dataclass(frozen=True)
class Decision:
    result: ClaimResult    # the verdict and its test at the look that decided it (or the last)
    look: int | None       # 1-based; None: undecided after the last look


@dataclass(frozen=True)
class Sequential:
    counts: list[int]          # seeds at each look
    levels: list[float]        # each look's level
    decisions: list[Decision]  # one per claim of the preset, in study.yaml's order
    cells: int                 # cells the stopped and the finished arms ran
    planned: int               # cells of the fixed design

    @property
    def saved(self) -> float:
        """The share of the fixed design's cells not run."""
        return 1 - self.cells / self.planned


def read_sequentially(study: Study, preset: str, results: list[CellResult]) -> Sequential:
    """Each look is the fixed design's evaluation (evaluate_claims: every claim's tests, Holm
    over all of them) at the look's level, on each running arm's first seeds of the preset and
    each stopped arm's seeds as it stopped; a claim keeps the first decisive verdict. Holm over
    the whole family at every look (decided claims included) keeps each look's error within
    its level whatever was decided before. An arm no claim uses stops after the first look."""
    cells = study.cells(preset)
    seeds: dict[str, list[int]] = {}
    for c in cells:   # each arm's seeds in the preset's order
        if c.seed not in seeds.setdefault(c.arm.name, []):
            seeds[c.arm.name].append(c.seed)
    counts = looks(max(len(s) for s in seeds.values()))
    spent = levels(counts, study.alpha)
    stopped: dict[str, int] = {}     # arm → seeds it ran
    decided: dict[str, Decision] = {}
    for look, (n, level) in enumerate(zip(counts, spent), start=1):
        taken = {arm: set(s[:stopped.get(arm, n)]) for arm, s in seeds.items()}
        arms = group([r for r in results if r.cell.seed in taken[r.cell.arm.name]])
        last = look == len(counts)
        found = evaluate_claims(replace(study, alpha=level), preset, arms,
                                {name: arm_gain(a) for name, a in arms.items()})
        for r in found:
            if r.claim.id not in decided and (r.verdict != stats.INCONCLUSIVE or last):
                decided[r.claim.id] = Decision(r, None if r.verdict == stats.INCONCLUSIVE
                                               else look)
        open_arms = {a for r in found if r.claim.id not in decided
                     for a in (r.claim.arm, r.claim.baseline) if a}
        stopped |= {arm: n for arm in seeds if arm not in stopped.keys() | open_arms}
    ran = sum(c.seed in seeds[c.arm.name][:stopped.get(c.arm.name, len(seeds[c.arm.name]))]
              for c in cells)
    order = [c.id for c in study.claims if c.id in decided]
    return Sequential(counts, spent, [decided[i] for i in order], ran, len(cells))
