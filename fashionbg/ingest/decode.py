"""Decoding the raw photos once into fixed-size arrays for the training cache."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashionbg.contracts.codes import IGNORE
from fashionbg.ingest.hygiene import open_rgb


def resize_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """RGB image → (H, W, 3) uint8 at size=(height, width), antialiased."""
    height, width = size
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def resize_gray(path: Path, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """A single-channel PNG (mask or alpha) → (H, W) uint8; class ids need nearest neighbour."""
    height, width = size
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((width, height), resample), dtype=np.uint8)


def decode_all(items: Sequence[tuple[Path, Path | None, Path | None]], size: tuple[int, int],
               workers: int = 2) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Decode (image, mask, alpha) paths into stacked arrays, in parallel threads.

    PIL releases the GIL while decoding and resizing, so threads keep both cores busy.
    Missing masks become IGNORE; alphas are all present or all absent.
    """
    height, width = size
    n = len(items)
    images = np.empty((n, height, width, 3), dtype=np.uint8)
    has_masks = any(mask is not None for _, mask, _ in items)
    masks = np.full((n, height, width), IGNORE, dtype=np.uint8) if has_masks else None
    has_alpha = n > 0 and all(alpha is not None for _, _, alpha in items)
    alphas = np.empty((n, height, width), dtype=np.uint8) if has_alpha else None

    def load(i: int) -> None:
        image_path, mask_path, alpha_path = items[i]
        images[i] = resize_rgb(open_rgb(image_path), size)
        if masks is not None and mask_path is not None:
            masks[i] = resize_gray(mask_path, size, nearest=True)
        if alphas is not None:
            alphas[i] = resize_gray(alpha_path, size, nearest=False)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        _drain(pool.map(load, range(n)), n)
    return images, masks, alphas


def _drain(results: Iterable[None], total: int) -> None:
    for _ in tqdm(results, total=total, desc="decode", unit="img", disable=None):
        pass
