"""The study report, built from the experiments alone: per arm the metric per variant over
seeds, the paired difference rembg − original, the cross-variant scores, the interactions the
claims are about, a verdict per claim and how much the models rely on the background
(backgrounds.py); as reports/study.md, a forest plot and a CSV that `dvc plots` draws, and as
the README's results section."""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fashionbg.core.io import atomic_file, write_csv  # noqa: E402
from fashionbg.study import backgrounds, stats  # noqa: E402
from fashionbg.study.definition import TASKS, Arm, Claim, Study  # noqa: E402
from fashionbg.study.results import CellResult  # noqa: E402

REPORT = Path("reports/study.md")      # a preset's `report:` names another; its figures go
FOREST, DIFFERENCES = "forest.png", "differences.csv"   # to the folder of the same name
README = Path("README.md")
README_MARKERS = ("<!-- study:begin -->", "<!-- study:end -->")


@dataclass(frozen=True)
class ArmResults:
    arm: Arm
    seeds: list[int]                        # seeds with both variants present, in order
    scores: dict[str, list[float]]          # variant → score per seed
    cross: dict[str, list[float]]           # trained on variant → score on the other variant
    per_image: dict[str, np.ndarray] | None  # variant → (seeds, images, ...) arrays


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
            per_image = {v: np.stack([c.per_image for c in pick[v]]) for v in pick}
        grouped[name] = ArmResults(first.cell.arm, seeds,
                                   {v: [c.score for c in pick[v]] for v in pick},
                                   {v: [c.cross for c in pick[v]] for v in pick}, per_image)
    return grouped


def arm_gain(a: ArmResults) -> stats.Effect:
    if a.per_image is not None:
        return stats.gain(a.per_image["rembg"], a.per_image["original"])
    return stats.seed_gain(a.scores["rembg"], a.scores["original"])


def claim_effect(claim: Claim, arms: dict[str, ArmResults]) -> stats.Effect | None:
    if claim.arm not in arms or (claim.test == "interaction" and claim.baseline not in arms):
        return None
    arm = arms[claim.arm]
    if claim.test == "gain":
        return arm_gain(arm)
    base = arms[claim.baseline]
    if arm.per_image is not None and base.per_image is not None:
        return stats.interaction((arm.per_image["rembg"], arm.per_image["original"]),
                                 (base.per_image["rembg"], base.per_image["original"]))
    return stats.seed_interaction((arm.scores["rembg"], arm.scores["original"]),
                                  (base.scores["rembg"], base.scores["original"]))


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def fmt_interval(i: stats.Interval, signed: bool = False) -> str:
    if i.low is None:
        return f"{fmt(i.estimate, signed)} (one seed)"
    return f"{fmt(i.estimate, signed)} [{fmt(i.low, signed)}, {fmt(i.high, signed)}]"


def fmt_p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def arm_table(arms: dict[str, ArmResults], study: Study) -> list[str]:
    lines = ["| arm | task: metric | seeds | original | rembg | rembg − original [95 % CI] | "
             "p | original-trained on rembg | rembg-trained on original |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in study.arms:
        if name not in arms:
            continue
        a = arms[name]
        effect = arm_gain(a)
        metric = TASKS[a.arm.task][2]
        lines.append(
            f"| `{name}`: {a.arm.about} | {a.arm.task}: {metric} | {len(a.seeds)} | "
            f"{fmt_interval(stats.mean_interval(a.scores['original']))} | "
            f"{fmt_interval(stats.mean_interval(a.scores['rembg']))} | "
            f"**{fmt_interval(effect.interval, True)}** | {fmt_p(effect.p)} | "
            f"{fmt(np.mean(a.cross['original']))} | {fmt(np.mean(a.cross['rembg']))} |")
    return lines


def claim_table(claims: list[tuple[Claim, stats.Effect | None, str]]) -> list[str]:
    lines = ["| claim of the paper | measured as | difference [95 % CI] | test, p | verdict |",
             "|---|---|---|---|---|"]
    for claim, effect, verdict in claims:
        measured = (f"gain of `{claim.arm}`" if claim.test == "gain"
                    else f"gain of `{claim.arm}` − gain of `{claim.baseline}`")
        if effect is None:
            lines.append(f"| {claim.claim} | {measured} | not run | – | inconclusive |")
            continue
        lines.append(f"| {claim.claim} | {measured} | {fmt_interval(effect.interval, True)} | "
                     f"{effect.test}, {fmt_p(effect.p)} | **{verdict}** |")
    return lines


def forest_plot(rows: list[tuple[str, stats.Interval]], path: Path) -> None:
    """Each difference with its interval, against zero."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, (label, i) in enumerate(reversed(rows)):
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
                 command: str) -> str:
    """Write the report files; return the markdown block the README shows."""
    report = report_path(study, preset)
    figures = report.with_suffix("")
    arms = group(results)
    claims = []
    ran = study.presets[preset]["arms"]
    for claim in (c for c in study.claims if {c.arm, c.baseline or c.arm} <= set(ran)):
        effect = claim_effect(claim, arms)
        verdict = ("inconclusive" if effect is None
                   else stats.verdict(effect.interval, claim.expect, study.minimal_effect))
        claims.append((claim, effect, verdict))
    rows = [(f"{name} gain", arm_gain(a).interval) for name, a in arms.items()]
    rows += [(f"{c.arm} − {c.baseline}", e.interval) for c, e, _ in claims
             if e is not None and c.test == "interaction"]
    if rows:
        forest_plot(rows, figures / FOREST)
    else:   # no arm has both variants yet: no plot, rather than last time's
        (figures / FOREST).unlink(missing_ok=True)
    write_csv(figures / DIFFERENCES, ("effect", "difference", "low", "high"),
              [(label, i.estimate, i.low, i.high) for label, i in rows])
    block = [f"Preset `{preset}` ({study.presets[preset].get('about', '')}): "
             f"{len(results)} cells read from the experiments, {missing} not run yet. "
             f"Made by `{command}`.", "", *(claim_table(claims) + [""] if claims else []),
             *arm_table(arms, study)]
    body = ["# Study report", "", *block, "",
            "Differences are rembg − original on the same test images. Classification and "
            "semantic segmentation: 95 % percentile bootstrap over seeds and test images "
            f"({stats.RESAMPLES} resamples, the metric recomputed on each), Wilcoxon "
            "signed-rank test over test images (each image's score averaged over seeds). "
            "Instance segmentation (mask AP has no per-image terms): Student-t interval and "
            "paired t-test over seeds. Per-variant columns: mean [95 % t-interval] over seeds. "
            f"Verdicts: an interval wholly on the expected side supports a claim, wholly on the "
            f"other side reverses it; within ±{study.minimal_effect} of zero it does not support "
            "an expected gain or loss (and supports a 'minimal or negative' claim); otherwise "
            "the data are inconclusive.", "",
            *([f"![forest plot]({(figures / FOREST).relative_to(report.parent)})", ""]
              if rows else []),
            *backgrounds.section(results, figures, report.parent)]
    with atomic_file(report) as f:
        f.write("\n".join(body))
    return "\n".join(block)


def update_readme(block: str, readme: Path = README) -> bool:
    """Replace the README's generated results section; False where it has no markers."""
    text = readme.read_text()
    begin, end = README_MARKERS
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    with atomic_file(readme) as f:
        f.write(pattern.sub(lambda _: f"{begin}\n{block}\n{end}", text))
    return True
