"""Putting a background-removed photo on a flat fill: image*alpha + fill*(1-alpha)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..common.params import ParamError

NAMED_FILLS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}


def parse_fill(value: Any, key: str = "background.fill") -> tuple[int, int, int]:
    """A colour name or an [r, g, b] triple of integers 0..255."""
    if isinstance(value, str) and value in NAMED_FILLS:
        return NAMED_FILLS[value]
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                    for v in value)):
        return int(value[0]), int(value[1]), int(value[2])
    raise ParamError(key, value, "one of " + ", ".join(NAMED_FILLS)
                     + " or an [r, g, b] list of integers 0..255")


def composite(image: np.ndarray, alpha: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """Blend an (H, W, 3) uint8 image onto `fill` with an (H, W) uint8 alpha."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    background = np.asarray(fill, dtype=np.float32)
    out = image.astype(np.float32) * a + background * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
