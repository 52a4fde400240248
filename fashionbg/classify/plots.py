"""The classifier's confusion matrix, in the dataset's class order, normalised per true class."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def confusion_figure(matrix: np.ndarray, labels: list[str], title: str) -> Figure:
    """Each row divided by its true-class count (a row with no test images stays 0), on a
    labelled 0..1 scale; the raw counts are written in the cells."""
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = 1.0 + 0.55 * len(labels)
    # A bare Figure (no pyplot) needs no GUI backend and keeps no global state.
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class's test images")
    return fig
