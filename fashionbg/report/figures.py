"""How every figure is written: at print resolution, with a caption under it that names the
model and its score, atomically."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from fashionbg.core.io import atomic_file

DPI = 200


def save_figure(fig: Figure, path: Path, caption: str) -> None:
    # Below everything drawn (tick labels and legends often reach under the figure's bottom
    # edge); drawing once first places the legends.
    fig.draw_without_rendering()
    bottom = fig.get_tightbbox().y0 / fig.get_figheight()
    fig.text(0.5, bottom - 0.02, caption, ha="center", va="top", fontsize=8)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
