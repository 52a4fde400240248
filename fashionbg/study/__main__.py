"""`python -m fashionbg.study run|report`: what `make study` calls."""
from __future__ import annotations

import argparse
import logging

from fashionbg.core.cli import stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.params import load_params
from fashionbg.study.definition import load_study
from fashionbg.study.report import build_report, report_path, update_readme
from fashionbg.study.results import read_results
from fashionbg.study.runner import parse_shard, run_cells

log = logging.getLogger("study")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fashionbg.study",
                                     description="Run the study's cells and write its report.")
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--shard", default="1/1", help="i/N: run every N-th cell from the i-th")
    return parser.parse_args()


@stage_main
def main() -> None:
    args = arguments()
    study = load_study(params=load_params())
    if args.preset not in study.presets:
        raise UserError(f"PRESET = {args.preset!r} is not allowed; expected one of "
                        + ", ".join(study.presets))
    cells = study.cells(args.preset)
    if args.command == "run":
        _, failed = run_cells(parse_shard(args.shard).take(cells))
        if failed:
            log.warning("%d cells failed; the report uses the others", len(failed))
        return
    results, missing = read_results(cells)
    command = "make study" + ("" if args.preset == "quick" else f" PRESET={args.preset}")
    block = build_report(study, args.preset, results, len(missing), command)
    print(block)
    own_report = "report" in study.presets[args.preset]
    log.info("wrote %s%s", report_path(study, args.preset),
             "" if own_report or not update_readme(block) else " and the README's results")


if __name__ == "__main__":
    main()
