"""Stage `prepare`: decode every usable raw image once into the cache of each variant of
data.variants (original, rembg and the controlled variants), and draw the sample grid of them
(plots/samples.png)."""
from __future__ import annotations

import logging
import shutil

import numpy as np

from fashionbg.background.build import CacheRows, write_mixed, write_per_image
from fashionbg.background.params import read_background
from fashionbg.background.samples import samples_figure
from fashionbg.background.variants import NEEDS_PERSON, partner_rows
from fashionbg.contracts.codes import SPLITS
from fashionbg.contracts.masks import FAILURES, alpha_path, read_failures
from fashionbg.contracts.params import MIXED, VARIANTS, read_image_size, read_variants
from fashionbg.contracts.prepared import load_variants
from fashionbg.contracts.raw import label_codes, read_classes, read_index
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.io import clear_leftovers, read_json
from fashionbg.core.params import integer, load_params
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
    seed = integer(params["data"], "data", "seed", minimum=0)
    # Drawn before anything is written, so a split with one class stops the stage cleanly.
    partners = {v: partner_rows(v, labels, splits, seed) for v in variants if v in MIXED}

    cache_rows = CacheRows(size, labels, splits, meta, has_masks)
    first = [v for v in variants if v not in MIXED]
    if fallback := write_per_image(items, cache_rows, background, first):
        log.warning("%d images have no ground-truth mask: %s take rembg's mask of the "
                    "person for them", fallback, ", ".join(v for v in NEEDS_PERSON if v in first))
    for v, rows_of in partners.items():
        write_mixed(v, rows_of, cache_rows)
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


if __name__ == "__main__":
    main()
