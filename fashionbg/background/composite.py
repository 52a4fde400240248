"""Putting a background-removed photo on a flat fill: image*alpha + fill*(1-alpha)."""
from __future__ import annotations

import numpy as np


def composite(image: np.ndarray, alpha: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """Blend (..., H, W, 3) uint8 images onto `fill` with (..., H, W) uint8 alphas: one image
    or a chunk of them (prepare composites a chunk at a time, bounding the float32 copies)."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    background = np.asarray(fill, dtype=np.float32)
    out = image.astype(np.float32) * a + background * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
