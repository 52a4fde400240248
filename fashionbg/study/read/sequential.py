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

from fashionbg.study.plan.definition import Cell, Study
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
    taken: int                 # looks whose cells are all there (a run in progress: fewer)
    decisions: list[Decision]  # one per claim of the preset, in study.yaml's order
    stopped: dict[str, int]    # arm → seeds it ran before every claim using it was decided
    seeds: dict[str, list[int]]   # each arm's seeds, in the preset's order
    ran: frozenset[str]        # names of the cells the looks taken used
    planned: int               # cells of the fixed design

    @property
    def finished(self) -> bool:
        return self.taken == len(self.counts)

    @property
    def saved(self) -> float:
        """The share of the fixed design's cells not run."""
        return 1 - len(self.ran) / self.planned


def read_sequentially(study: Study, preset: str, results: list[CellResult]) -> Sequential:
    """Each look is the fixed design's evaluation (evaluate_claims: every claim's tests, Holm
    over all of them) at the look's level, on each running arm's first seeds of the preset and
    each stopped arm's seeds as it stopped; a claim keeps the first decisive verdict. Holm over
    the whole family at every look (decided claims included) keeps each look's error within
    its level whatever was decided before. An arm no claim uses stops after the first look.
    The looks are taken while their cells are all in `results` (a run in progress stops at
    the last complete one)."""
    cells = study.cells(preset)
    seeds: dict[str, list[int]] = {}
    for c in cells:   # each arm's seeds in the preset's order
        if c.seed not in seeds.setdefault(c.arm.name, []):
            seeds[c.arm.name].append(c.seed)
    counts = looks(max(len(s) for s in seeds.values()))
    spent = levels(counts, study.alpha)
    have = {r.cell.name for r in results}
    stopped: dict[str, int] = {}     # arm → seeds it ran
    decided: dict[str, Decision] = {}
    latest: list[ClaimResult] = []   # the last look taken: the undecided claims' results
    used: set[str] = set()
    taken = 0
    for look, (n, level) in enumerate(zip(counts, spent), start=1):
        needed = {c.name for c in cells
                  if c.seed in seeds[c.arm.name][:stopped.get(c.arm.name, n)]}
        if not needed <= have:
            break
        used, taken = needed, look
        arms = group([r for r in results if r.cell.name in used])
        latest = evaluate_claims(replace(study, alpha=level), preset, arms,
                                 {name: arm_gain(a) for name, a in arms.items()})
        for r in latest:
            if r.claim.id not in decided and r.verdict != stats.INCONCLUSIVE:
                decided[r.claim.id] = Decision(r, look)
        open_arms = {a for r in latest if r.claim.id not in decided
                     for a in (r.claim.arm, r.claim.baseline) if a}
        if look < len(counts):
            stopped |= {arm: n for arm in seeds if arm not in stopped.keys() | open_arms}
    decisions = [decided.get(r.claim.id, Decision(r, None)) for r in latest]
    return Sequential(counts, spent, taken, decisions, stopped, seeds, frozenset(used),
                      len(cells))


def next_wave(cells: list[Cell], read: Sequential) -> list[Cell]:
    """The cells the next look needs: each running arm's seeds up to the next look's count
    (those already run included; the runner skips them); none once the last look is taken."""
    if read.finished:
        return []
    n = read.counts[read.taken]
    return [c for c in cells if c.arm.name not in read.stopped
            and c.seed in read.seeds[c.arm.name][:n]]


def summary(read: Sequential) -> list[str]:
    """The report's lines on the sequential reading: the looks and their levels, each claim's
    deciding look, and the cells run and saved."""
    looks_text = ", ".join(f"{n} seeds at level {level:.4f}"
                           for n, level in zip(read.counts, read.levels))
    lines = [f"Read sequentially: looks at {looks_text} (α spent by Lan–DeMets' "
             "O'Brien–Fleming-type function, the looks joined by Bonferroni); "
             f"{read.taken} of {len(read.counts)} looks taken; {len(read.ran)} of "
             f"{read.planned} cells used"
             + (f", {read.saved:.0%} saved." if read.finished else ", the run goes on."), "",
             "| claim | verdict | decided at look (seeds) |", "|---|---|---|"]
    for d in read.decisions:
        when = ("not decided" if d.look is None
                else f"{d.look} ({read.counts[d.look - 1]})")
        lines.append(f"| {d.result.claim.id} | {d.result.verdict} | {when} |")
    return lines
