"""Headline metrics: the few numbers the study compares, in one small file per task with one
rounding, so `dvc exp show` and `dvc metrics diff` list only those. Everything else a stage
measures (per-class scores, losses, timings, the variant and model it ran) goes to a detail
file under metrics/detail/, which dvc.yaml does not declare as metrics."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DIGITS = 4


def rounded(value: float | int | None) -> float | int | None:
    """`value` to DIGITS places; None (no score) stays None."""
    return None if value is None else round(value, DIGITS)


def pick(scores: Mapping[str, Any], keys: Sequence[str]) -> dict[str, float | int | None]:
    """`keys` of `scores`, rounded."""
    return {key: rounded(scores[key]) for key in keys}


def own_and_cross(test: Mapping[str, Any], cross: Mapping[str, Any], keys: Sequence[str]
                   ) -> dict[str, dict[str, float | int | None]]:
    """A model's headline: `keys` on its own variant's test images ("test") and on the other
    variant's ("cross"; "cross_variant" in the detail files, shortened so that `dvc exp show`
    fits a terminal)."""
    return {"test": pick(test, keys), "cross": pick(cross, keys)}


def reliance(scores: Mapping[str, float | None]) -> dict[str, float | None]:
    """How much a model relies on the background, from its score per test variant (Xiao et
    al. 2020): the BG-gap, score on mixed_same − score on mixed_rand (the same people on
    backgrounds of their own class against another class's), the score on only_bg (the
    background alone, the person removed) and on no_fg (the person blacked out, the background
    kept: for a segmenter, the garments it still finds from their context); None where those
    variants were not built."""
    same, rand = scores.get("mixed_same"), scores.get("mixed_rand")
    gap = None if same is None or rand is None else same - rand
    return {"gap": rounded(gap), "only_bg": rounded(scores.get("only_bg")),
            "no_fg": rounded(scores.get("no_fg"))}


def task_headline(scores: Mapping[str, Mapping[str, Any]], own: str, other: str,
                  keys: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
    """The headline of a model scored on every built variant (`scores` by test variant):
    `keys` on its own and the other variant's test images, and its reliance on the background
    by the first of them."""
    return {**own_and_cross(scores[own], scores[other], keys),
            "bg": reliance({v: s[keys[0]] for v, s in scores.items()})}


def matrix_row(trained_on: str, scores: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """One model's row of the train-variant × test-variant matrix, as `dvc plots` rows (the
    heatmap template .dvc/plots/variant_heatmap.json stacks the rows of every revision)."""
    return [{"trained_on": trained_on, "tested_on": tested_on, "score": rounded(score)}
            for tested_on, score in scores.items()]
