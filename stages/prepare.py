"""Stage `prepare`: decode every usable raw image once into the original and rembg caches, and
draw the sample grid of the two (plots/samples.png)."""
from __future__ import annotations

import logging

import numpy as np

from fashionbg.background.composite import composite
from fashionbg.background.params import read_background
from fashionbg.background.samples import samples_figure
from fashionbg.contracts.codes import SPLITS
from fashionbg.contracts.masks import FAILURES, alpha_path, read_failures
from fashionbg.contracts.params import read_image_size
from fashionbg.contracts.prepared import load_prepared, prepared_writer
from fashionbg.contracts.raw import label_codes, read_classes, read_index
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.io import read_json
from fashionbg.core.params import load_params
from fashionbg.ingest.decode import decode_chunks
from fashionbg.report.figures import save_figure

log = logging.getLogger("prepare")


@stage_main
def main() -> None:
    params = load_params()
    size, fill = read_image_size(params), read_background(params).fill
    classes = read_classes(paths.RAW)
    failed = read_failures(paths.REMBG)
    # Both variants keep exactly the rows rembg produced an alpha for, so their splits match.
    rows = [r for r in read_index(paths.RAW) if r.path not in failed]
    if not rows:
        raise UserError(f"no usable images in {paths.RAW} (rembg failed on {len(failed)})")
    if failed:
        log.warning("%d images left out of both variants because rembg failed on them "
                    "(listed in %s)", len(failed), paths.REMBG / FAILURES)

    items = [(paths.RAW / r.path, paths.RAW / r.mask if r.mask else None,
              paths.REMBG / alpha_path(r.path)) for r in rows]
    labels = label_codes(rows, classes["labels"], paths.RAW / "index.csv")
    splits = np.array([SPLITS.index(r.split) for r in rows], dtype=np.uint8)
    meta = {"labels": classes["labels"], "mask_classes": classes["mask_classes"],
            "image_size": list(size), "paths": [r.path for r in rows],
            "excluded": sorted(failed), "fill": list(fill)}
    has_masks = any(r.mask for r in rows)

    # Chunks stream from the decoder into both caches, so memory does not grow with N.
    with prepared_writer(paths.prepared("original"), size, labels, splits,
                         {**meta, "variant": "original"}, has_masks) as original, \
            prepared_writer(paths.prepared("rembg"), size, labels, splits,
                            {**meta, "variant": "rembg"}, has_masks, has_alpha=True) as rembg:
        for chunk in decode_chunks(items, size):
            original.append(chunk.images, chunk.masks)
            rembg.append(composite(chunk.images, chunk.alphas, fill), chunk.masks, chunk.alphas)
    log.info("prepared %d images of %s for both variants", len(rows), size)

    sod = read_json(paths.BACKGROUND_DETAIL)
    score = (f"mean IoU of its masks with the true person {sod['mean_iou']}"
             if sod["mean_iou"] is not None else "no true person masks to score it against")
    caption = (f"Background removal by rembg ({sod['model']}), background filled "
               f"{params['background']['fill']}: {score}")
    save_figure(samples_figure(load_prepared(paths.prepared("original")),
                               load_prepared(paths.prepared("rembg"))), paths.SAMPLES, caption)


if __name__ == "__main__":
    main()
