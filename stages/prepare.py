"""Stage `prepare`: decode every usable raw image once into the cache of each variant of
data.variants (original, rembg and the controlled variants), and draw the sample grid of them
(plots/samples.png)."""
from __future__ import annotations

import logging
import shutil
from contextlib import ExitStack

import numpy as np

from fashionbg.background.composite import composite
from fashionbg.background.params import BackgroundConfig, read_background
from fashionbg.background.samples import samples_figure
from fashionbg.background.variants import (
    NEEDS_PERSON,
    Chunk,
    partner_rows,
    per_image_variant,
    truth_alpha,
)
from fashionbg.contracts.codes import SPLITS
from fashionbg.contracts.masks import FAILURES, alpha_path, read_failures
from fashionbg.contracts.params import MIXED, VARIANTS, read_image_size, read_variants
from fashionbg.contracts.prepared import load_prepared, load_variants, prepared_writer
from fashionbg.contracts.raw import label_codes, read_classes, read_index
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.io import clear_leftovers, read_json
from fashionbg.core.params import integer, load_params
from fashionbg.ingest.decode import Decoded, chunk_rows, decode_chunks
from fashionbg.report.figures import save_figure

log = logging.getLogger("prepare")


@stage_main
def main() -> None:
    params = load_params()
    size, background = read_image_size(params), read_background(params)
    variants = read_variants(params)
    classes = read_classes(paths.RAW)
    failed = read_failures(paths.REMBG)
    # Every variant keeps exactly the rows rembg produced an alpha for, so their splits match.
    rows = [r for r in read_index(paths.RAW) if r.path not in failed]
    if not rows:
        raise UserError(f"no usable images in {paths.RAW} (rembg failed on {len(failed)})")
    if failed:
        log.warning("%d images left out of every variant because rembg failed on them "
                    "(listed in %s)", len(failed), paths.REMBG / FAILURES)

    items = [(paths.RAW / r.path, paths.RAW / r.mask if r.mask else None,
              paths.REMBG / alpha_path(r.path)) for r in rows]
    labels = label_codes(rows, classes["labels"], paths.RAW / "index.csv")
    splits = np.array([SPLITS.index(r.split) for r in rows], dtype=np.uint8)
    meta = {"labels": classes["labels"], "mask_classes": classes["mask_classes"],
            "image_size": list(size), "paths": [r.path for r in rows],
            "excluded": sorted(failed), "fill": list(background.fill),
            "person_fill": background.person_fill}
    has_masks = any(r.mask for r in rows)
    if "oracle" in variants and not has_masks:
        kept = ",".join(v for v in variants if v != "oracle")
        raise UserError(f"data.variants lists oracle, but data.source = "
                        f"{params['data']['source']} has no ground-truth masks; leave it out "
                        f"(dvc exp run -S 'data.variants=[{kept}]')")
    first = [v for v in variants if v not in MIXED]
    seed = integer(params["data"], "data", "seed", minimum=0)
    # Drawn before anything is written, so a split with one class stops the stage cleanly.
    partners = {v: partner_rows(v, labels, splits, seed) for v in variants if v in MIXED}

    # Chunks stream from the decoder into every cache, so memory does not grow with N.
    with ExitStack() as stack:
        writers = {v: stack.enter_context(prepared_writer(
            paths.prepared(v), size, labels, splits, {**meta, "variant": v}, has_masks,
            has_alpha=v == "rembg")) for v in first}
        fallback = 0
        for chunk in decode_chunks(items, size):
            images, missing = variant_images(chunk, background, first)
            fallback += missing
            for v, writer in writers.items():
                writer.append(images[v], chunk.masks, chunk.alphas if v == "rembg" else None)
    if fallback:
        log.warning("%d images have no ground-truth mask: %s take rembg's mask of the "
                    "person for them", fallback, ", ".join(v for v in NEEDS_PERSON if v in first))
    for v, rows_of in partners.items():
        write_mixed(v, rows_of, size, meta, has_masks)
    for v in set(VARIANTS) - set(variants):   # a variant no longer asked for, or its leftovers
        shutil.rmtree(paths.prepared(v), ignore_errors=True)
        clear_leftovers(paths.prepared(v))
    log.info("prepared %d images of %s for %s", len(rows), size, ", ".join(variants))

    sod = read_json(paths.BACKGROUND_DETAIL)
    score = (f"mean IoU of its masks with the true person {sod['mean_iou']}"
             if sod["mean_iou"] is not None else "no true person masks to score it against")
    caption = (f"Background removal by rembg ({sod['model']}), background filled "
               f"{params['background']['fill']}, person removed by {background.person_fill} for "
               f"only_bg and mixed_*: {score}")
    save_figure(samples_figure(load_variants(paths.PREPARED)), paths.SAMPLES, caption)


def variant_images(chunk: Decoded, background: BackgroundConfig, variants: list[str]
                   ) -> tuple[dict[str, np.ndarray], int]:
    """A decoded chunk's images in each of `variants` (no mixed ones), and how many of its
    rows had no ground truth for the person mask."""
    assert chunk.alphas is not None  # every item has a rembg alpha (see main)
    person, missing = None, 0
    if set(NEEDS_PERSON) & set(variants):
        person, missing = (truth_alpha(chunk.masks, chunk.alphas) if chunk.masks is not None
                           else (chunk.alphas, len(chunk.images)))
    parts = Chunk(chunk.images, chunk.alphas, person, background.fill, background.person_fill)
    return {v: per_image_variant(v)(parts) for v in variants}, missing


def write_mixed(variant: str, partners: np.ndarray, size: tuple[int, int], meta: dict,
                has_masks: bool) -> None:
    """The rembg foreground of every row on the only_bg background of its partner row, read
    back from the finished caches a chunk at a time."""
    original, rembg, only_bg = (load_prepared(paths.prepared(v))
                                for v in ("original", "rembg", "only_bg"))
    assert rembg.alpha is not None  # the rembg cache is the one written with its alphas
    step = chunk_rows(size)
    with prepared_writer(paths.prepared(variant), size, original.labels, original.splits,
                         {**meta, "variant": variant, "background_rows": partners.tolist()},
                         has_masks) as writer:
        for start in range(0, len(partners), step):
            rows = slice(start, start + step)
            writer.append(composite(original.images[rows], rembg.alpha[rows],
                                    only_bg.images[partners[rows]]),
                          None if original.masks is None else original.masks[rows])


if __name__ == "__main__":
    main()
