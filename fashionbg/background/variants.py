"""The controlled background variants beside original and rembg (after Xiao et al. 2020, "Noise
or Signal: The Role of Image Backgrounds in Object Recognition", the Backgrounds Challenge's
ImageNet-9 variants), made from the prepared photo, its rembg alpha and, where the source has
them, its ground-truth masks:

    oracle      the photo on the flat fill through the ground-truth person mask instead of
                rembg's (SOD error taken out of background removal); with the black fill it is
                the Challenge's only_fg
    only_bg     the person removed (the ground-truth mask where there is one, else rembg's,
                widened) as background.person_fill says: `tile` (the Challenge's only_bg_t),
                `black` (its only_bg_b) or `telea` (OpenCV inpainting of the person's shape)
    no_fg       the widened person region left black, the rest of the photo kept (its no_fg)
    mixed_same  the rembg foreground on the only_bg background of another image of the same
                class and split
    mixed_rand  the same on the only_bg background of an image of another class, same split
    mixed_next  the same on the only_bg background of an image of the next class (in the order
                of the source's classes), same split

Variants are built by name from PER_IMAGE (from one decoded chunk) and PARTNERS (the mixed
ones, from the rows whose only_bg background each row takes); an unknown name is refused.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from fashionbg.background.composite import composite
from fashionbg.contracts.codes import IGNORE
from fashionbg.core.errors import UserError

BACKGROUND_CLASS = 0     # class id 0 is background in every source's masks
# The hole is widened by this share of the shorter side, so rembg's soft edge and the
# person's outline do not survive its removal.
WIDEN = 0.03
INPAINT_RADIUS = 3


def truth_alpha(masks: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, int]:
    """The ground-truth person alpha (255 wherever a class other than background is marked)
    of (n, H, W) masks, and how many rows had no ground truth and took `fallback` (rembg's)."""
    alpha = np.where((masks != BACKGROUND_CLASS) & (masks != IGNORE), 255, 0).astype(np.uint8)
    missing = np.all(masks == IGNORE, axis=(1, 2))
    alpha[missing] = fallback[missing]
    return alpha, int(missing.sum())


def person_holes(alpha: np.ndarray) -> np.ndarray:
    """(n, H, W) bool: the person region of (n, H, W) `alpha`, widened by WIDEN."""
    height, width = alpha.shape[1:3]
    side = max(1, round(WIDEN * min(height, width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1, 2 * side + 1))
    return np.stack([cv2.dilate((a > 0).astype(np.uint8), kernel) > 0 for a in alpha])


def bounding_box(hole: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns of the smallest box around a (H, W) bool hole; None when empty."""
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    if not len(rows):
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def tile_box(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`image` with the bounding box of `hole` covered by tiles of the largest strip of the
    image beside it (above, below, left or right of the box, as wide or as tall as the box), so
    no pixel of the box survives and its fill is the image's own background. This is the
    Backgrounds Challenge's only_bg_t (Xiao et al. 2020, Table 1: the foreground's box filled
    with tiles of the remaining background); its repository ships those images, not the code
    that made them, and uses them as every foreground's backdrop (MadryLab/
    backgrounds_challenge, challenge_eval.py loads only_bg_t; tools/model_utils.py,
    adv_bgs_eval_model, pastes inp * (1 - mask) + mask * im), as the mixed_* variants here do.
    Which strip is tiled is this project's choice. A box that covers the whole image leaves
    nothing to tile with and is filled black."""
    box = bounding_box(hole)
    assert box is not None  # remove_person fills only holes with pixels
    rows, cols = box
    strips = [image[:rows.start, cols], image[rows.stop:, cols],
              image[rows, :cols.start], image[rows, cols.stop:]]
    strip = max(strips, key=lambda s: s.shape[0] * s.shape[1])
    out = image.copy()
    if strip.size:
        tiled_rows = np.arange(rows.stop - rows.start) % strip.shape[0]
        tiled_cols = np.arange(cols.stop - cols.start) % strip.shape[1]
        out[rows, cols] = strip[tiled_rows][:, tiled_cols]
    else:
        out[rows, cols] = 0
    return out


def black_box(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`image` with the bounding box of `hole` black (the Challenge's only_bg_b)."""
    out = image.copy()
    out[bounding_box(hole)] = 0
    return out


def inpaint_telea(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`image` with `hole` inpainted by Telea's method: a smooth smear in the hole's shape."""
    return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8), INPAINT_RADIUS,
                       cv2.INPAINT_TELEA)


# background.person_fill: how only_bg (and so every mixed_* background) removes the person.
PERSON_REMOVERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "tile": tile_box, "telea": inpaint_telea, "black": black_box}


def remove_person(images: np.ndarray, alpha: np.ndarray, how: str) -> np.ndarray:
    """(n, H, W, 3) uint8 images with the widened region of (n, H, W) `alpha` removed by the
    PERSON_REMOVERS method `how` (background.person_fill); an image without a person region is
    kept as it is."""
    fill = PERSON_REMOVERS[how]
    out = images.copy()
    for i, (image, hole) in enumerate(zip(images, person_holes(alpha))):
        if hole.any():
            out[i] = fill(image, hole)
    return out


def black_out_person(images: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """no_fg: (n, H, W, 3) images with the widened region of `alpha` black, the rest kept."""
    return np.where(person_holes(alpha)[..., None], np.uint8(0), images)


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


def _classes_in_split(labels: np.ndarray, in_split: np.ndarray, variant: str) -> np.ndarray:
    """The class codes of a split, in order; at least two, since `variant` mixes classes."""
    present = np.unique(labels[in_split])
    if len(present) < 2:
        raise UserError(f"data.variants: {variant} needs images of at least two classes in "
                        "every split (this data has one, or none)")
    return present


def other_class_partners(labels: np.ndarray, splits: np.ndarray, seed: int) -> np.ndarray:
    """For each row, the row whose background it takes in mixed_rand: drawn uniformly from
    the rows of the same split with another class."""
    rng = np.random.default_rng([seed, 2])
    partners = np.arange(len(labels))
    for split in np.unique(splits):
        in_split = splits == split
        for label in _classes_in_split(labels, in_split, "mixed_rand"):
            rows = np.flatnonzero(in_split & (labels == label))
            partners[rows] = rng.choice(np.flatnonzero(in_split & (labels != label)),
                                        size=len(rows))
    return partners


def next_class_partners(labels: np.ndarray, splits: np.ndarray, seed: int) -> np.ndarray:
    """For each row, the row whose background it takes in mixed_next: drawn uniformly from
    the rows of the same split with the next class in code order (the source's class order),
    wrapping round, and skipping classes the split has no image of."""
    rng = np.random.default_rng([seed, 3])
    partners = np.arange(len(labels))
    for split in np.unique(splits):
        in_split = splits == split
        present = _classes_in_split(labels, in_split, "mixed_next")
        for label, following in zip(present, np.roll(present, -1)):
            rows = np.flatnonzero(in_split & (labels == label))
            partners[rows] = rng.choice(np.flatnonzero(in_split & (labels == following)),
                                        size=len(rows))
    return partners


@dataclass(frozen=True)
class Chunk:
    """What the per-image variants are made of, for a chunk of rows."""
    images: np.ndarray                 # (n, H, W, 3) uint8 photos
    alphas: np.ndarray                 # (n, H, W) uint8 rembg alphas
    person: np.ndarray | None          # (n, H, W) uint8 true person alphas (rembg's without)
    fill: tuple[int, int, int]         # background.fill
    person_fill: str                   # background.person_fill

    @property
    def person_alpha(self) -> np.ndarray:
        """`person`, which the NEEDS_PERSON variants are only ever built with."""
        assert self.person is not None
        return self.person


PER_IMAGE: dict[str, Callable[[Chunk], np.ndarray]] = {
    "original": lambda c: c.images,
    "rembg": lambda c: composite(c.images, c.alphas, c.fill),
    "oracle": lambda c: composite(c.images, c.person_alpha, c.fill),
    "only_bg": lambda c: remove_person(c.images, c.person_alpha, c.person_fill),
    "no_fg": lambda c: black_out_person(c.images, c.person_alpha),
}
NEEDS_PERSON = ("oracle", "only_bg", "no_fg")
PARTNERS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "mixed_same": same_class_partners,
    "mixed_rand": other_class_partners,
    "mixed_next": next_class_partners,
}


def per_image_variant(name: str) -> Callable[[Chunk], np.ndarray]:
    """The builder of a variant made from each image alone; an unknown name is refused."""
    if name not in PER_IMAGE:
        raise UserError(f"no per-image background variant {name!r}; the variants are "
                        + ", ".join(PER_IMAGE) + " and, from partner rows, "
                        + ", ".join(PARTNERS))
    return PER_IMAGE[name]


def partner_rows(name: str, labels: np.ndarray, splits: np.ndarray, seed: int) -> np.ndarray:
    """For a mixed variant, the row whose only_bg background each row takes; an unknown name
    is refused."""
    if name not in PARTNERS:
        raise UserError(f"no mixed background variant {name!r}; the mixed variants are "
                        + ", ".join(PARTNERS))
    return PARTNERS[name](labels, splits, seed)
