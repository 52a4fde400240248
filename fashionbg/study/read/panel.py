"""One compact original-against-rembg figure per task, for a paper: the model trained on
original images next to the one trained on rembg images, each scored on its own variant's test
images and on the other's (left), and per class on its own test images (right). It reads the
detail metrics of two revisions, e.g. the experiments `original` and `rembg` of the README.

    python -m fashionbg.study.read.panel original rembg     # make panels
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fashionbg.contracts.tasks import TASKS
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.report.figures import save_figure
from fashionbg.report.headline import rounded
from fashionbg.study.experiments import existing_experiments, git_file

PANELS = Path("reports/panels")
FIGURES = {   # each task's detail metrics: the name of its figure
    paths.CLASSIFICATION_DETAIL: "classification",
    paths.SEGMENTATION_DETAIL: "segmentation",
}
log = logging.getLogger("panel")


def read_detail(rev: str, path: Path) -> dict:
    """`path` at `rev`: an experiment's name or any git revision."""
    text = git_file(existing_experiments().get(rev, rev), str(path))
    if text is None:
        raise UserError(f"{rev} has no {path}; run the README's `dvc exp run` lines first")
    return json.loads(text)


def panel_figure(original: dict, rembg: dict) -> tuple[Figure, str]:
    """The figure of one task and its caption, from the detail metrics of the model trained on
    original images and of the one trained on rembg images."""
    spec = TASKS[original.get("task", "classify")]
    key, name = spec.key_metric, spec.key_metric_words
    per_class_key, per_class_name = spec.per_class_key, spec.per_class_words
    trained = {"original": original, "rembg": rembg}
    fig = Figure(figsize=(7.5, 2.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.6]})
    x = np.arange(len(trained))
    for offset, (label, block) in ((-0.2, ("own variant", "test")),
                                   (0.2, ("other variant", "cross_variant"))):
        values = [_score(d[block].get(key)) for d in trained.values()]
        left.bar(x + offset, values, 0.4, label=f"tested on {label}")
    left.set_xticks(x, [f"trained on\n{v}" for v in trained])
    left.set_ylabel(f"test {name}")
    left.set_ylim(0, 1)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    classes = list(original["test"][per_class_key])
    x = np.arange(len(classes))
    for offset, (variant, detail) in zip((-0.2, 0.2), trained.items()):
        per_class = detail["test"][per_class_key]
        right.bar(x + offset, [_score(per_class.get(c)) for c in classes], 0.4,
                  label=f"trained and tested on {variant}")
    right.set_xticks(x, classes, rotation=45, ha="right", fontsize=7)
    right.set_ylabel(f"per-class {per_class_name}")
    right.set_ylim(0, 1)
    right.legend(fontsize=7)
    fig.tight_layout()
    model = original["arch"] if "arch" in original else original["model"]
    caption = (f"{model}: test {name} {rounded(original['test'][key])} trained on original "
               f"images, {rounded(rembg['test'][key])} on rembg images "
               f"({original['test']['images']} test images)")
    return fig, caption


def _score(value: float | None) -> float:
    """A missing score (no test images of a class) draws no bar."""
    return np.nan if value is None else value


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fashionbg.study.read.panel",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("original", help="revision of the model trained on original images")
    parser.add_argument("rembg", help="revision of the model trained on rembg images")
    args = parser.parse_args()
    for path, task in FIGURES.items():
        original, rembg = read_detail(args.original, path), read_detail(args.rembg, path)
        if (original["variant"], rembg["variant"]) != ("original", "rembg"):
            raise UserError(f"{args.original} and {args.rembg} trained the {task} model on "
                            f"{original['variant']} and {rembg['variant']} images; expected "
                            "original and rembg")
        fig, caption = panel_figure(original, rembg)
        save_figure(fig, PANELS / f"{task}.png", caption)
        log.info("wrote %s", PANELS / f"{task}.png")


if __name__ == "__main__":
    main()
