"""Putting a background-removed photo on a flat fill: image*alpha + fill*(1-alpha)."""
from __future__ import annotations

import numpy as np


def composite(image: np.ndarray, alpha: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """Blend an (H, W, 3) uint8 image onto `fill` with an (H, W) uint8 alpha."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    background = np.asarray(fill, dtype=np.float32)
    out = image.astype(np.float32) * a + background * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
