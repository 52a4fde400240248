"""Writing the variants' prepared caches: the per-image variants from one decoding pass, then
each mixed variant composed from the finished caches, a chunk at a time, so memory does not
grow with the number of images."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashionbg.background.composite import composite
from fashionbg.background.params import BackgroundConfig
from fashionbg.background.variants import NEEDS_PERSON, Chunk, per_image_variant, truth_alpha
from fashionbg.contracts.prepared import load_prepared, prepared_writer
from fashionbg.core import paths
from fashionbg.ingest.decode import Decoded, Item, chunk_rows, decode_chunks


@dataclass(frozen=True)
class CacheRows:
    """What every variant's cache holds alike: the rows' labels and splits, in order."""

    size: tuple[int, int]        # height, width
    labels: np.ndarray
    splits: np.ndarray
    meta: dict[str, Any]         # each cache's meta, less its variant
    has_masks: bool


def write_per_image(items: Sequence[Item], rows: CacheRows, background: BackgroundConfig,
                    variants: list[str]) -> int:
    """Decode `items` once into the cache of each of `variants` (none of them mixed); how many
    rows had no ground-truth person mask (the variants that need one take rembg's)."""
    with ExitStack() as stack:
        writers = {v: stack.enter_context(prepared_writer(
            paths.prepared(v), rows.size, rows.labels, rows.splits,
            {**rows.meta, "variant": v}, rows.has_masks, has_alpha=v == "rembg"))
            for v in variants}
        fallback = 0
        for chunk in decode_chunks(items, rows.size):
            images, missing = variant_images(chunk, background, variants)
            fallback += missing
            for v, writer in writers.items():
                writer.append(images[v], chunk.masks, chunk.alphas if v == "rembg" else None)
    return fallback


def variant_images(chunk: Decoded, background: BackgroundConfig, variants: list[str]
                   ) -> tuple[dict[str, np.ndarray], int]:
    """A decoded chunk's images in each of `variants` (no mixed ones), and how many of its
    rows had no ground truth for the person mask."""
    alphas = chunk.alphas
    assert alphas is not None, "every prepared row has rembg's alpha"
    person, missing = None, 0
    if set(NEEDS_PERSON) & set(variants):
        person, missing = (truth_alpha(chunk.masks, alphas) if chunk.masks is not None
                           else (alphas, len(chunk.images)))
    parts = Chunk(chunk.images, alphas, person, background.fill, background.person_fill)
    return {v: per_image_variant(v)(parts) for v in variants}, missing


def write_mixed(variant: str, partners: np.ndarray, rows: CacheRows) -> None:
    """The rembg foreground of every row on the only_bg background of its partner row, read
    back from the finished caches a chunk at a time."""
    original, rembg, only_bg = (load_prepared(paths.prepared(v))
                                for v in ("original", "rembg", "only_bg"))
    assert rembg.alpha is not None, "the rembg cache keeps its alpha"
    step = chunk_rows(rows.size)
    with prepared_writer(paths.prepared(variant), rows.size, original.labels, original.splits,
                         {**rows.meta, "variant": variant, "background_rows": partners.tolist()},
                         rows.has_masks) as writer:
        for start in range(0, len(partners), step):
            part = slice(start, start + step)
            writer.append(composite(original.images[part], rembg.alpha[part],
                                    only_bg.images[partners[part]]),
                          None if original.masks is None else original.masks[part])
