"""Stage `remove_background`: rembg alpha mask for every raw image, plus how good they are."""
from __future__ import annotations

import logging

from fashionbg.background.params import read_background
from fashionbg.background.sod import (
    MaskCache,
    SodOptions,
    cache_key,
    make_session,
    remove_backgrounds,
    sod_providers,
)
from fashionbg.contracts.masks import FAILURE_COLUMNS, FAILURES
from fashionbg.contracts.raw import read_index
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.io import atomic_dir, write_csv, write_json
from fashionbg.core.params import load_params

log = logging.getLogger("remove_background")


@stage_main
def main() -> None:
    config = read_background(load_params())
    options = SodOptions(config.alpha_matting, config.post_process_mask)
    providers = sod_providers(config.device)
    rows = read_index(paths.RAW)
    session = make_session(config.model, paths.SOD_HOME, providers)
    cache = MaskCache(paths.SOD_CACHE, cache_key(config.model, paths.SOD_HOME, options,
                                                 providers))
    with atomic_dir(paths.REMBG) as tmp:
        report = remove_backgrounds(rows, paths.RAW, tmp, session, options, cache)
        write_csv(tmp / FAILURES, FAILURE_COLUMNS, report.failures)
    log.info("%d of %d alphas reused from %s (on %s)", report.reused, report.images, cache.dir,
             providers[0])
    metrics = report.metrics(config.model)
    write_json(paths.BACKGROUND_METRICS, metrics)
    log.info("%s", metrics)


if __name__ == "__main__":
    main()
