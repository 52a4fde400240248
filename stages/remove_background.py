"""Stage `remove_background`: rembg alpha mask for every raw image, plus how good they are
(headline: failures and mean IoU with the true person; detail: model and timing)."""
from __future__ import annotations

import logging

from fashionbg.background.params import read_background
from fashionbg.background.sod import (
    MaskCache,
    SodOptions,
    batched_model,
    cache_key,
    make_session,
    remove_backgrounds,
    resolve_batch,
    session_device,
)
from fashionbg.background.workers import mask_cache_root
from fashionbg.contracts.masks import FAILURE_COLUMNS, FAILURES
from fashionbg.contracts.raw import read_index
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.io import atomic_dir, write_csv, write_json
from fashionbg.core.params import load_params
from fashionbg.report.headline import pick

HEADLINE = ("failures", "mean_iou")
log = logging.getLogger("remove_background")


@stage_main
def main() -> None:
    config = read_background(load_params())
    options = SodOptions(config.alpha_matting, config.post_process_mask)
    rows = read_index(paths.RAW)
    session = make_session(config.model, paths.SOD_HOME, config.device)
    device = session_device(session)
    batch = resolve_batch(config.batch_size, device)
    batched = batched_model(session, config.model, paths.SOD_HOME, batch)
    key = cache_key(config.model, options, device, batch)
    cache = MaskCache(mask_cache_root(paths.SOD_CACHE), key)
    with atomic_dir(paths.REMBG) as tmp:
        report = remove_backgrounds(rows, paths.RAW, tmp, session, options, cache, batched)
        write_csv(tmp / FAILURES, FAILURE_COLUMNS, report.failures)
        metrics = report.metrics(config.model)
        write_json(tmp / paths.BACKGROUND_DETAIL.relative_to(paths.REMBG), metrics)
    write_json(paths.BACKGROUND_METRICS, pick(metrics, HEADLINE))
    speed = f", {report.seconds / report.computed:.3f} s each" if report.computed else ""
    log.info("%s on %s, %d photo(s) per call; %d of %d masks computed%s, the others reused "
             "from %s", metrics, device, batch, report.computed, report.images, speed, cache.dir)


if __name__ == "__main__":
    main()
