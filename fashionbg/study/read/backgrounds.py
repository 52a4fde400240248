"""The report's section on how much the models rely on the background (after Xiao et al. 2020,
"Noise or Signal"): per arm the train-variant × test-variant matrix, the BG-gap (score on
mixed_same − mixed_rand: the same people on backgrounds of their own class against another's),
the only-BG score and the no-FG score (for a segmenter: garments found from context alone);
the rembg effect split into removal itself (oracle − original) and SOD error (rembg −
oracle); and training on mixed_rand as the remedy.

Every difference is paired: the same test images (t-test over seeds and test images, see
stats.py) where per-image results exist, else the same seeds (paired t-test)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from fashionbg.contracts.params import VARIANTS
from fashionbg.contracts.tasks import TASKS
from fashionbg.core.io import atomic_file
from fashionbg.study.read import stats
from fashionbg.study.read.results import CellResult, known

HEATMAP = "variants.png"
Cells = dict[int, CellResult]     # seed → result of one arm trained on one variant


def by_arm(results: list[CellResult]) -> dict[str, dict[str, Cells]]:
    """arm → training variant → seed → result."""
    grouped: dict[str, dict[str, Cells]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        grouped[r.cell.arm.name][r.cell.variant][r.cell.seed] = r
    return grouped


def _seeds(groups: list[tuple[Cells, str]]) -> list[int]:
    """The seeds every (cells, test variant) pair has a score for."""
    common = set.intersection(*(set(cells) for cells, _ in groups))
    return sorted(s for s in common
                  if all(cells[s].by_test.get(on) is not None for cells, on in groups))


def _per_image(groups: list[tuple[Cells, str]], seeds: list[int]) -> list | None:
    """The stacked per-image results (stats.stack) of each pair, where all have per-image
    results on the same test images; else None."""
    first = groups[0][0][seeds[0]]
    if not all(on in cells[s].tested and cells[s].images == first.images
               for cells, on in groups for s in seeds):
        return None
    return [stats.stack([cells[s].tested[on] for s in seeds]) for cells, on in groups]


def difference(a: Cells, on_a: str, b: Cells, on_b: str) -> stats.Effect | None:
    """Score of the `a` models on `on_a` test images − the `b` models' on `on_b`."""
    groups = [(a, on_a), (b, on_b)]
    seeds = _seeds(groups)
    if not seeds:
        return None
    arrays = _per_image(groups, seeds)
    if arrays is not None:
        return stats.gain(*arrays)
    return stats.seed_gain([known(a[s].by_test[on_a]) for s in seeds],
                           [known(b[s].by_test[on_b]) for s in seeds])


def gap_change(a: Cells, b: Cells) -> stats.Effect | None:
    """BG-gap of the `a` models − BG-gap of the `b` models."""
    groups = [(a, "mixed_same"), (a, "mixed_rand"), (b, "mixed_same"), (b, "mixed_rand")]
    seeds = _seeds(groups)
    if not seeds:
        return None
    arrays = _per_image(groups, seeds)
    if arrays is not None:
        return stats.interaction((arrays[0], arrays[1]), (arrays[2], arrays[3]))
    scores = [[known(cells[s].by_test[on]) for s in seeds] for cells, on in groups]
    return stats.seed_interaction((scores[0], scores[1]), (scores[2], scores[3]))


def fmt_effect(effect: stats.Effect | None) -> str:
    if effect is None:
        return "not run"
    i = effect.interval
    if i.low is None:
        return f"{i.estimate:+.3f} (one seed)"
    p = "" if effect.p is None else f", p {effect.p:.2g} unadjusted"
    return f"{i.estimate:+.3f} [{i.low:+.3f}, {i.high:+.3f}]{p}"


def matrix(trained: dict[str, Cells]) -> tuple[list[str], list[str], np.ndarray]:
    """Training variants, test variants and the mean score over seeds of each pair (nan where
    not measured)."""
    rows = [v for v in VARIANTS if v in trained]
    columns = [v for v in VARIANTS
               if any(v in r.by_test for cells in trained.values() for r in cells.values())]
    values = np.array([[np.mean([r.by_test[c] for r in trained[v].values()
                                 if r.by_test.get(c) is not None] or [np.nan])
                        for c in columns] for v in rows])
    return rows, columns, values


def matrix_lines(name: str, metric: str, trained: dict[str, Cells]) -> list[str]:
    rows, columns, values = matrix(trained)
    lines = [f"| `{name}` ({metric}, mean over seeds) | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for v, scores in zip(rows, values):
        cells = " | ".join("–" if np.isnan(x) else f"{x:.3f}" for x in scores)
        lines.append(f"| trained on {v} | {cells} |")
    return lines


def heatmap(arms: dict[str, dict[str, Cells]], path: Path) -> None:
    """One panel per arm: training variant (rows) × test variant (columns), mean score."""
    fig, axes = plt.subplots(len(arms), 1, figsize=(7.5, 1.6 + 0.45 * 6 * len(arms)),
                             squeeze=False)
    for ax, (name, trained) in zip(axes[:, 0], arms.items()):
        rows, columns, values = matrix(trained)
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [f"trained on {v}" for v in rows], fontsize=8)
        metric = _metric(trained)
        ax.set_title(f"{name}: {metric} by training (rows) and test images (columns)",
                     fontsize=9)
        for (i, j), x in np.ndenumerate(values):
            if not np.isnan(x):
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if x > 0.5 else "black")
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=200)
    plt.close(fig)


def section(results: list[CellResult], figures: Path, report_dir: Path) -> list[str]:
    """The markdown of the section (empty where no model was tested on the controlled
    variants), with the heatmap written to `figures` and linked from `report_dir`."""
    arms = {name: trained for name, trained in by_arm(results).items()
            if any({"mixed_rand", "only_bg", "no_fg"} & set(r.by_test)
                   for cells in trained.values() for r in cells.values())}
    if not arms:
        return []
    heatmap(arms, figures / HEATMAP)
    lines = ["## How much do the models rely on the background?", "",
             "BG-gap = score on `mixed_same` − score on `mixed_rand` (the rembg person on the "
             "`only_bg` background of another image of the same class, against another "
             "class's); near zero when a model ignores the background. Only-BG = the score with "
             "the person removed as `background.person_fill` says (chance for classification: "
             "1 / classes). No-FG = the score with the person blacked out and the rest of the "
             "photo kept: for a segmenter, the garments it still finds from their context "
             "alone (their pixels are black).", "",
             "| arm | metric | trained on | BG-gap [95 % CI] | only-BG score [95 % CI] | "
             "no-FG score [95 % CI] |", "|---|---|---|---|---|---|"]
    for name, trained in arms.items():
        for v in (v for v in VARIANTS if v in trained):
            gap = difference(trained[v], "mixed_same", trained[v], "mixed_rand")
            lines.append(f"| `{name}` | {_metric(trained)} | {v} | {fmt_effect(gap)} | "
                         f"{_score_on(trained[v], 'only_bg')} | "
                         f"{_score_on(trained[v], 'no_fg')} |")
    lines += _decomposition(arms) + _remedy(arms)
    lines.append("")
    for name, trained in arms.items():
        lines += [*matrix_lines(name, _metric(trained), trained), ""]
    lines.append(f"![train × test variant matrices]"
                 f"({(figures / HEATMAP).relative_to(report_dir)})")
    return lines


def _decomposition(arms: dict[str, dict[str, Cells]]) -> list[str]:
    """rembg − original split into removal and SOD error, for the arms trained on all three
    (none: no table)."""
    rows = []
    for name, t in arms.items():
        if {"original", "rembg", "oracle"} <= set(t):
            parts = [difference(t[a], a, t[b], b) for a, b in
                     (("rembg", "original"), ("oracle", "original"), ("rembg", "oracle"))]
            rows.append(f"| `{name}` | " + " | ".join(map(fmt_effect, parts)) + " |")
    return _optional_table(
        "What the rembg effect splits into, on each model's own test images: removal itself "
        "(oracle − original: the true person mask) and the error of the salient-object "
        "detector (rembg − oracle); they add up to rembg − original.",
        ["arm", "rembg − original", "oracle − original (removal)", "rembg − oracle (SOD error)"],
        rows)


def _remedy(arms: dict[str, dict[str, Cells]]) -> list[str]:
    """Training on mixed_rand against training on the photos, for the arms trained on both
    (none: no table)."""
    rows = []
    for name, t in arms.items():
        if {"original", "mixed_rand"} <= set(t):
            cost = difference(t["mixed_rand"], "original", t["original"], "original")
            rows.append(f"| `{name}` | {fmt_effect(gap_change(t['mixed_rand'], t['original']))}"
                        f" | {fmt_effect(cost)} |")
    return _optional_table(
        "The remedy: training on `mixed_rand` (backgrounds that carry no class information), "
        "against training on the photos.",
        ["arm", "BG-gap, mixed_rand-trained − original-trained",
         "score on the photos, mixed_rand-trained − original-trained"], rows)


def _optional_table(intro: str, columns: list[str], rows: list[str]) -> list[str]:
    """A paragraph and its table, or nothing where no arm has a row."""
    if not rows:
        return []
    return ["", intro, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows]


def _metric(trained: dict[str, Cells]) -> str:
    """The headline metric of the arm these cells belong to."""
    cell = next(iter(next(iter(trained.values())).values())).cell
    return TASKS[cell.arm.task].key_metric


def _score_on(cells: Cells, tested_on: str) -> str:
    """The mean score of `cells` on the `tested_on` test images, with its interval over
    seeds; "–" where they were not tested on it."""
    scores = [score for r in cells.values()
              if (score := r.by_test.get(tested_on)) is not None]
    return _interval(stats.score_interval(stats.seed_level(scores))) if scores else "–"


def _interval(i: stats.Interval) -> str:
    if i.low is None:
        return f"{i.estimate:.3f} (one seed)"
    return f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}]"
