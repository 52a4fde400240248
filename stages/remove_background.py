"""Stage `remove_background`: rembg alpha mask for every raw image, plus how good they are."""
from __future__ import annotations

import logging
from pathlib import Path

from .background.sod import SodOptions, make_session, remove_backgrounds
from .background.weights import MODELS
from .common.io import atomic_dir, write_json
from .common.params import boolean, choice, load_params, section, stage_main
from .datasets.raw import read_index, write_csv
from .fetch_model import MODEL_HOME

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/rembg")
METRICS = Path("metrics/background.json")
log = logging.getLogger("remove_background")


@stage_main
def main() -> None:
    cfg = section(load_params(), "background")
    model = choice(cfg, "background", "model", MODELS)
    options = SodOptions(boolean(cfg, "background", "alpha_matting"),
                         boolean(cfg, "background", "post_process_mask"))
    rows = read_index(RAW_DIR)
    session = make_session(model, MODEL_HOME)
    with atomic_dir(OUT_DIR) as tmp:
        report = remove_backgrounds(rows, RAW_DIR, tmp, session, options)
        write_csv(tmp / "failures.csv", ("path", "reason"), report.failures)
    metrics = report.metrics(model)
    write_json(METRICS, metrics)
    log.info("%s", metrics)


if __name__ == "__main__":
    main()
