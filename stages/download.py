"""Stage `download`: build data/raw/ from the source named by `data.source`."""
from __future__ import annotations

import logging
from pathlib import Path

from .common.io import atomic_dir
from .common.params import UserError, choice, load_params, number, section, stage_main
from .datasets.raw import QUARANTINE_COLUMNS, RawWriter, write_csv
from .datasets.sources import SOURCES

RAW_DIR = Path("data/raw")
# Where the refusals of a failed run are kept (data/raw/ itself is not replaced by a failed run).
FAILED_QUARANTINE = Path("data/raw.quarantine-failed.csv")
log = logging.getLogger("download")


@stage_main
def main() -> None:
    data = section(load_params(), "data")
    source = SOURCES[choice(data, "data", "source", SOURCES)]
    max_bad = number(data, "data", "max_bad_fraction", minimum=0.0, maximum=1.0)
    config = source.validate(data)
    with atomic_dir(RAW_DIR) as tmp:
        writer = RawWriter(tmp)
        result = source.build(config, writer)
        summary = writer.finish(result.labels, result.mask_classes, result.extra)
        seen = summary["images"] + summary["refused"]
        if not seen:
            raise UserError(f"data.source = {data['source']} found no photos at all")
        if not summary["images"] or summary["refused"] > max_bad * seen:
            write_csv(FAILED_QUARANTINE, QUARANTINE_COLUMNS, writer.refused)
            kinds = ", ".join(f"{n} {k}" for k, n in summary["refused_by_reason"].items())
            why = (f"more than data.max_bad_fraction = {max_bad}" if summary["images"]
                   else "no usable photo is left")
            raise UserError(f"{summary['refused']} of {seen} files were refused ({kinds}): "
                            f"{why}. data/raw was not changed; every refused file and why: "
                            f"{FAILED_QUARANTINE.resolve()}")
    FAILED_QUARANTINE.unlink(missing_ok=True)
    log.info("data/raw: %d images (%s), %d refused", summary["images"], summary["splits"],
             summary["refused"])
    if summary["refused"]:
        log.warning("refused: %s; see %s", summary["refused_by_reason"],
                    RAW_DIR / "quarantine.csv")


if __name__ == "__main__":
    main()
