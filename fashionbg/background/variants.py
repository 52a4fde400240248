"""The controlled background variants beside original and rembg (after Xiao et al. 2020, "Noise
or Signal: The Role of Image Backgrounds in Object Recognition"), made from the prepared photo,
its rembg alpha and, where the source has them, its ground-truth masks:

    oracle      the photo on the flat fill through the ground-truth person mask instead of
                rembg's (SOD error taken out of background removal)
    only_bg     the person cut out (the ground-truth mask where there is one, else rembg's,
                widened) and the hole filled by OpenCV's Telea inpainting
    mixed_same  the rembg foreground on the only_bg background of another image of the same
                class and split
    mixed_rand  the same on the only_bg background of an image of another class, same split
"""
from __future__ import annotations

import cv2
import numpy as np

from fashionbg.contracts.codes import IGNORE
from fashionbg.core.errors import UserError

BACKGROUND_CLASS = 0     # class id 0 is background in every source's masks
# The hole is widened by this share of the shorter side, so rembg's soft edge and the
# person's outline do not survive inpainting.
WIDEN = 0.03
INPAINT_RADIUS = 3


def truth_alpha(masks: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, int]:
    """The ground-truth person alpha (255 wherever a class other than background is marked)
    of (n, H, W) masks, and how many rows had no ground truth and took `fallback` (rembg's)."""
    alpha = np.where((masks != BACKGROUND_CLASS) & (masks != IGNORE), 255, 0).astype(np.uint8)
    missing = np.all(masks == IGNORE, axis=(1, 2))
    alpha[missing] = fallback[missing]
    return alpha, int(missing.sum())


def remove_person(images: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 images with the region of (n, H, W) `alpha` widened and inpainted."""
    height, width = images.shape[1:3]
    side = max(1, round(WIDEN * min(height, width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1, 2 * side + 1))
    out = np.empty_like(images)
    for i, (image, a) in enumerate(zip(images, alpha)):
        hole = cv2.dilate((a > 0).astype(np.uint8), kernel)
        out[i] = cv2.inpaint(np.ascontiguousarray(image), hole, INPAINT_RADIUS,
                             cv2.INPAINT_TELEA)
    return out


def same_class_partners(labels: np.ndarray, splits: np.ndarray, seed: int) -> np.ndarray:
    """For each row, the row whose background it takes in mixed_same: a random derangement
    within each (split, class) group, so every background is used once; a row alone in its
    group keeps its own."""
    rng = np.random.default_rng([seed, 1])
    partners = np.arange(len(labels))
    for split in np.unique(splits):
        for label in np.unique(labels[splits == split]):
            group = rng.permutation(np.flatnonzero((splits == split) & (labels == label)))
            partners[group] = np.roll(group, -1)
    return partners


def other_class_partners(labels: np.ndarray, splits: np.ndarray, seed: int) -> np.ndarray:
    """For each row, the row whose background it takes in mixed_rand: drawn uniformly from
    the rows of the same split with another class."""
    rng = np.random.default_rng([seed, 2])
    partners = np.arange(len(labels))
    for split in np.unique(splits):
        in_split = splits == split
        for label in np.unique(labels[in_split]):
            rows = np.flatnonzero(in_split & (labels == label))
            others = np.flatnonzero(in_split & (labels != label))
            if not len(others):
                raise UserError("data.variants: mixed_rand needs images of at least two "
                                "classes in every split (this data has one, or none)")
            partners[rows] = rng.choice(others, size=len(rows))
    return partners
