"""Pictures for `dvc plots`: confusion matrix and an original | mask | rembg sample grid."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fashionbg.core.io import atomic_file  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def confusion_figure(matrix: np.ndarray, labels: list[str], title: str) -> plt.Figure:
    """Row-normalised confusion matrix with raw counts written in the cells."""
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = 1.0 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, int(count), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return fig


def sample_grid(original: np.ndarray, alpha: np.ndarray, rembg: np.ndarray,
                titles: list[str]) -> plt.Figure:
    """One row per sample: original | rembg alpha | composited rembg image."""
    n = len(original)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2.6 * n), squeeze=False)
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
