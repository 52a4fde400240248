"""Decoding the raw photos once into fixed-size arrays for the training cache."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashionbg.contracts.codes import IGNORE
from fashionbg.ingest.hygiene import open_rgb

# Images per chunk are chosen to hold about this many pixels (12 MB of RGB; compositing's
# float32 temporaries are a few times that), whatever the image size.
CHUNK_PIXELS = 1 << 22


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


@dataclass(frozen=True)
class Decoded:
    """Consecutive rows of decoded arrays; masks/alphas are None when the items have none."""
    images: np.ndarray              # (n, H, W, 3)
    masks: np.ndarray | None        # (n, H, W), IGNORE for an item without a mask
    alphas: np.ndarray | None       # (n, H, W)


def chunk_rows(size: tuple[int, int]) -> int:
    """How many images of `size` make one chunk of about CHUNK_PIXELS pixels."""
    return max(1, CHUNK_PIXELS // (size[0] * size[1]))


Item = tuple[Path, Path | None, Path | None]     # image, mask (or None), alpha (or None)


def decode_item(item: Item, size: tuple[int, int], has_masks: bool
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One item's image, mask (IGNORE where it has none, None when no item has one) and
    alpha, at `size`."""
    image_path, mask_path, alpha_path = item
    image = resize_rgb(open_rgb(image_path), size)
    mask = None
    if has_masks:
        mask = (resize_gray(mask_path, size, nearest=True) if mask_path is not None
                else np.full(size, IGNORE, dtype=np.uint8))
    alpha = resize_gray(alpha_path, size, nearest=False) if alpha_path is not None else None
    return image, mask, alpha


def decode_chunks(items: Sequence[Item], size: tuple[int, int], workers: int = 2
                  ) -> Iterator[Decoded]:
    """Decode the items into chunks of stacked arrays, in order, so a caller can stream any
    number of images through bounded memory.

    PIL releases the GIL while decoding and resizing, so threads keep both cores busy.
    Alphas must be all present or all absent.
    """
    has_masks = any(mask is not None for _, mask, _ in items)
    if len({alpha is None for _, _, alpha in items}) > 1:
        raise ValueError("alphas must be given for every item or for none")
    step = chunk_rows(size)
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(items), desc="decode", unit="img", disable=None) as bar:
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            images, masks, alphas = zip(*pool.map(
                lambda item: decode_item(item, size, has_masks), chunk))
            bar.update(len(chunk))
            yield Decoded(np.stack(images), np.stack(masks) if has_masks else None,
                          None if alphas[0] is None else np.stack(alphas))
