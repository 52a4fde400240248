"""Stage `download`: build data/raw/ from the source named by `data.source`."""
from __future__ import annotations

import logging

from fashionbg.contracts.params import data_section
from fashionbg.contracts.raw import QUARANTINE_COLUMNS, RawWriter
from fashionbg.core import paths
from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.io import atomic_dir, write_csv
from fashionbg.core.params import load_params
from fashionbg.ingest.splits import check_coverage, fractions
from fashionbg.sources.registry import read_source

log = logging.getLogger("download")


@stage_main
def main() -> None:
    params = load_params()
    read = read_source(params)
    max_bad = read.max_bad_fraction
    failed_list = paths.FAILED_QUARANTINE
    with atomic_dir(paths.RAW) as tmp:
        writer = RawWriter(tmp)
        result = read.source.build(read.config, writer)
        summary = writer.finish(result.labels, result.mask_classes, result.extra)
        seen = summary["images"] + summary["refused"]
        if not seen:
            raise UserError(f"data.source = {read.name} found no photos at all")
        if not summary["images"] or summary["refused"] > max_bad * seen:
            write_csv(failed_list, QUARANTINE_COLUMNS, writer.refused)
            kinds = ", ".join(f"{n} {k}" for k, n in summary["refused_by_reason"].items())
            why = (f"more than data.max_bad_fraction = {max_bad}" if summary["images"]
                   else "no usable photo is left")
            raise UserError(f"{summary['refused']} of {seen} files were refused ({kinds}): "
                            f"{why}. {paths.RAW} was not changed; every refused file and why: "
                            f"{failed_list.resolve()}")
        warnings = check_coverage([(r.split, r.label) for r in writer.rows], result.labels,
                                  fractions(data_section(params))[1])
    failed_list.unlink(missing_ok=True)
    log.info("%s: %d images (%s), %d refused; splits: %s", paths.RAW, summary["images"],
             summary["splits"], summary["refused"], summary.get("splits_from", "from the source"))
    for warning in warnings:
        log.warning("%s: the metrics leave it out of that split", warning)
    if summary["refused"]:
        log.warning("refused: %s; see %s", summary["refused_by_reason"],
                    paths.RAW / "quarantine.csv")


if __name__ == "__main__":
    main()
