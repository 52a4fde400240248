"""Stage `download`: build data/raw/ from the source named by `data.source`."""
from __future__ import annotations

import logging
from pathlib import Path

from .common.io import atomic_dir
from .common.params import UserError, choice, load_params, number, section, stage_main
from .datasets.raw import RawWriter
from .datasets.sources import SOURCES

RAW_DIR = Path("data/raw")
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
        if seen and summary["refused"] / seen > max_bad:
            first = "; ".join(f"{p}: {r}" for p, r in writer.refused[:5])
            raise UserError(f"{summary['refused']} of {seen} files were refused, more than "
                            f"data.max_bad_fraction = {max_bad}; first: {first}")
    log.info("data/raw: %d images (%s), %d refused", summary["images"], summary["splits"],
             summary["refused"])


if __name__ == "__main__":
    main()
