"""The picture of what each background variant shows: the rembg alpha and every built variant
for the first test images of each class. It depends on the data only, so it is drawn once, by
`prepare`, not per experiment."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fashionbg.contracts.prepared import Prepared

UNLABELLED_SAMPLES = 8


def sample_rows(data: Prepared) -> np.ndarray:
    """The first test image of each class; for data without classes, the first
    UNLABELLED_SAMPLES test images."""
    test = data.indices("test")
    if not data.meta["labels"]:
        return test[:UNLABELLED_SAMPLES]
    return np.concatenate([test[data.labels[test] == c][:1]
                           for c in range(len(data.meta["labels"]))])


def samples_figure(variants: dict[str, Prepared]) -> Figure:
    """The sample grid of the built variants' caches (original and rembg at least), each row
    titled with its class (or, for data without classes, its file name)."""
    original, rembg = variants["original"], variants["rembg"]
    assert rembg.alpha is not None  # the rembg cache is the one written with its alphas
    rows = sample_rows(original)
    labels, names = original.meta["labels"], original.meta["paths"]
    titles = [labels[original.labels[r]] if original.labels[r] >= 0 else Path(names[r]).name
              for r in rows]
    columns = {"original": original.images[rows], "rembg mask": rembg.alpha[rows],
               **{name: cache.images[rows] for name, cache in variants.items()
                  if name != "original"}}
    return sample_grid(columns, titles)


def sample_grid(columns: dict[str, np.ndarray], titles: list[str]) -> Figure:
    """One row per sample, one column per named stack of images (2-D ones drawn in grey)."""
    n, width = len(titles), len(columns)
    fig = Figure(figsize=(2 * width, 2.6 * n))
    axes = fig.subplots(n, width, squeeze=False)
    for j, (name, images) in enumerate(columns.items()):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(images[i], cmap="gray" if images[i].ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(name, fontsize=9)
    for i, title in enumerate(titles):
        axes[i, 0].set_ylabel(title, fontsize=8)
    fig.tight_layout()
    return fig
