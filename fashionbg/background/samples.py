"""The picture of what background removal does: original | rembg alpha | composited image for
the first test images of each class. It depends on the data only, so it is drawn once, by
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


def samples_figure(original: Prepared, rembg: Prepared) -> Figure:
    """The sample grid of the two variants' caches, each row titled with its class (or, for
    data without classes, its file name)."""
    rows = sample_rows(original)
    labels, names = original.meta["labels"], original.meta["paths"]
    titles = [labels[original.labels[r]] if original.labels[r] >= 0 else Path(names[r]).name
              for r in rows]
    return sample_grid(original.images[rows], rembg.alpha[rows], rembg.images[rows], titles)


def sample_grid(original: np.ndarray, alpha: np.ndarray, rembg: np.ndarray,
                titles: list[str]) -> Figure:
    """One row per sample: original | rembg alpha | composited rembg image."""
    n = len(original)
    fig = Figure(figsize=(6, 2.6 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        for j, (img, name) in enumerate(((original[i], "original"), (alpha[i], "rembg mask"),
                                         (rembg[i], "rembg"))):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        axes[i, 0].set_ylabel(titles[i], fontsize=8)
    fig.tight_layout()
    return fig
