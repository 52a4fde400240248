"""Per-class scores as rows for a `dvc plots` bar chart, one bar per class and test variant."""
from __future__ import annotations

from collections.abc import Mapping


def per_class_bars(scores: Mapping[str, Mapping[str, float | None]]
                   ) -> list[dict[str, str | float]]:
    """`scores` maps each test variant to its per-class scores, in class order; a class with no
    score (None: no test images of it) gets no bar."""
    return [{"class": f"{name}, tested on {tested_on}", "score": value}
            for tested_on, per_class in scores.items()
            for name, value in per_class.items() if value is not None]
