"""Overlay pictures: one row per test image, columns image | ground truth | prediction."""
from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy import ndimage

ALPHA = 0.75
DIM = 0.5   # the photo under a class map is shown grey and dimmed so class colours read clearly


def class_colors(count: int) -> np.ndarray:
    """RGB in [0, 1] per class id; id 0 (background) is never painted."""
    cmap = matplotlib.colormaps["tab20"]
    return np.array([cmap(i % 20)[:3] for i in range(count)])


def paint_classes(image: np.ndarray, class_map: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Blend class colours over a dimmed grey copy of a uint8 RGB image where the id is a
    class other than 0 (ids past the colour table, such as IGNORE, stay unpainted)."""
    grey = image.astype(np.float64).mean(2, keepdims=True) / 255 * DIM
    out = np.repeat(grey, 3, axis=2)
    painted = (class_map > 0) & (class_map < len(colors))
    out[painted] = (1 - ALPHA) * out[painted] + ALPHA * colors[class_map[painted]]
    return out


def paint_instances(image: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                    colors: np.ndarray) -> np.ndarray:
    """Colour each instance by its class and outline it in white so touching ones stay apart;
    later masks are drawn over earlier ones (pass them in ascending score)."""
    class_map = np.zeros(image.shape[:2], np.int64)
    edges = np.zeros(image.shape[:2], bool)
    for mask, label in zip(masks, labels):
        class_map[mask] = label
        edges |= mask & ~ndimage.binary_erosion(mask)
    out = paint_classes(image, class_map, colors)
    out[edges] = 1.0
    return out


def overlay_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 class_names: list[str], colors: np.ndarray, title: str) -> Figure:
    """A figure of (image, painted ground truth, painted prediction) rows, with a legend of
    `class_names` (index i is coloured colors[i]; index 0 is left out)."""
    height, width = rows[0][0].shape[:2]
    panel = 1.6
    # A bare Figure (no pyplot) needs no GUI backend and keeps no global state.
    fig = Figure(figsize=(3 * panel, len(rows) * panel * height / width + 1.0))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, panels in enumerate(rows):
        for c, picture in enumerate(panels):
            axes[r][c].imshow(picture, interpolation="nearest")
            axes[r][c].set_axis_off()
    for c, name in enumerate(("image", "ground truth", "prediction")):
        axes[0][c].set_title(name, fontsize=8)
    handles = [Patch(color=colors[i], label=name) for i, name in enumerate(class_names) if i]
    # Anchored at a point of the figure, so that a caption placed under it stays under it.
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.05),
               ncol=min(len(handles), 5), fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
