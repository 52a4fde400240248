"""`python -m fashionbg.study run|preflight|report|calibrate`: what `make study` and
`make preflight` call, and the calibration of the report's statistics on simulated studies.

Where each real dataset lies is said once (`--data fashionstyle14=<archive, folder or URL>`) and
reaches every cell that reads it; `--smoke` runs the preset's smoke settings instead.
"""
from __future__ import annotations

import argparse
import logging
import sys

from fashionbg.core.cli import INTERRUPTED, stage_main
from fashionbg.core.errors import UserError
from fashionbg.core.params import load_params
from fashionbg.study.experiments import fetch_experiments
from fashionbg.study.plan import schedule
from fashionbg.study.plan.definition import SMOKE_SUFFIX, Cell, Study, load_study, locate
from fashionbg.study.plan.preflight import preflight
from fashionbg.study.read.calibrate import (
    DESIGNS,
    METRICS,
    SEQUENTIAL_DESIGNS,
    calibrate,
    calibrate_sequential,
    sequential_table,
    table,
)
from fashionbg.study.read.report import build_report, report_path, update_readme
from fashionbg.study.read.results import read_results
from fashionbg.study.read.sequential import next_wave, read_sequentially, summary
from fashionbg.study.read.stats import MIN_SEEDS
from fashionbg.study.run.engines import make_engine, study_lock
from fashionbg.study.run.protocol import EngineOptions
from fashionbg.study.run.runner import cells_to_run, parse_shard

log = logging.getLogger("study")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fashionbg.study",
                                     description="Run the study's cells and write its report.")
    parser.add_argument("command", choices=("run", "preflight", "report", "calibrate"))
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--smoke", action="store_true",
                        help="the preset's smoke run: every arm, variant and claim, tiny")
    parser.add_argument("--shard", default="1/1", help="i/N: run every N-th cell from the i-th")
    parser.add_argument("--data", action="append", default=[], metavar="SOURCE=WHERE",
                        help="where a dataset is: an archive, a folder or an http(s) URL, "
                             "e.g. fashionstyle14=~/data/FashionStyle14_v1.zip")
    parser.add_argument("--sha256", action="append", default=[], metavar="SOURCE=HEX",
                        help="the sha256 of that archive or download")
    parser.add_argument("--engine", default="auto",
                        help="queue: DVC's experiment queue, one cell at a time; ray: every "
                             "device of this machine or of the cluster at RAY_ADDRESS; auto: "
                             "ray where there is more than one GPU (or, without one, more "
                             "than one core) or a RAY_ADDRESS, else queue")
    parser.add_argument("--git-remote", default="", metavar="URL",
                        help="ray across machines: the Git remote workers clone and push to")
    parser.add_argument("--dvc-remote", default="", metavar="URL",
                        help="ray across machines: the DVC remote (S3, a shared path) workers "
                             "pull from and push to")
    parser.add_argument("--cpus-per-cell", default="1", metavar="N",
                        help="ray: cores (and threads) each cell gets")
    parser.add_argument("--studies", type=studies, default=200,
                        help="calibrate: simulated studies per scenario and regime (10-100000)")
    parser.add_argument("--metric", type=metric, action="append",
                        help="calibrate: a metric to simulate, " + ", ".join(METRICS)
                             + " (repeat for several; default all)")
    parser.add_argument("--design", type=design, action="append", metavar="SEEDSxIMAGES",
                        help="calibrate: seeds and test images of a design, e.g. 3x96 (repeat "
                             "for several; default " + ", ".join(f"{s}x{n}" for s, n in DESIGNS)
                             + "; with --sequential "
                             + ", ".join(f"{s}x{n}" for s, n in SEQUENTIAL_DESIGNS) + ")")
    parser.add_argument("--sequential", action="store_true",
                        help="run: seeds in waves (3, then 3 more at a time), each arm until "
                             "every claim using it is decided; report: the claims as decided "
                             "look by look, and the cells saved; calibrate: the error over "
                             "all looks, power and cells saved on simulated studies")
    return parser.parse_args()


def studies(text: str) -> int:
    """--studies: an integer from 10 (fewer says nothing about a 5 % rate) to 100,000."""
    if not (text.isascii() and text.isdigit() and 10 <= int(text) <= 100_000):
        raise UserError(f"--studies {text!r} is not allowed; expected an integer from 10 to "
                        "100000")
    return int(text)


def metric(text: str) -> str:
    if text not in METRICS:
        raise UserError(f"--metric {text!r} is not allowed; expected one of "
                        + ", ".join(METRICS))
    return text


def design(text: str) -> tuple[int, int]:
    """--design: seeds (2, the fewest that give an interval, to 100) x test images (10 to
    100,000)."""
    seeds, _, images = text.partition("x")
    if not (seeds.isascii() and seeds.isdigit() and images.isascii() and images.isdigit()
            and 2 <= int(seeds) <= 100 and 10 <= int(images) <= 100_000):
        raise UserError(f"--design {text!r} is not allowed; expected SEEDSxIMAGES, 2 to 100 "
                        "seeds and 10 to 100000 test images, e.g. 3x96")
    return int(seeds), int(images)


def sequential_designs(designs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """--design with --sequential: more seeds than the first look's (else there is one look,
    the fixed design's); default SEQUENTIAL_DESIGNS."""
    for seeds, images in designs:
        if seeds <= MIN_SEEDS:
            raise UserError(f"--design '{seeds}x{images}' is not allowed with --sequential; "
                            f"expected more than {MIN_SEEDS} seeds (the first look is at "
                            f"{MIN_SEEDS}), e.g. 5x96")
    return tuple(designs) or SEQUENTIAL_DESIGNS


def pairs(values: list[str], flag: str) -> dict[str, str]:
    """`--data a=b` arguments as a mapping; an empty value (an unset make variable) is left out."""
    out = {}
    for value in values:
        name, sep, where = value.partition("=")
        if not sep or not name:
            raise UserError(f"{flag} {value!r} is not allowed; expected SOURCE=VALUE, "
                            "e.g. fashionpedia=/data/fashionpedia")
        if where:
            out[name.strip().lower()] = where
    return out


def preset_name(study: Study, preset: str, smoke: bool) -> str:
    name = preset + SMOKE_SUFFIX if smoke else preset
    if name not in study.presets:
        allowed = sorted(p for p in study.presets if not p.endswith(SMOKE_SUFFIX))
        raise UserError(f"PRESET = {preset!r}" + (" with SMOKE=1" if smoke else "")
                        + " is not allowed; expected one of " + ", ".join(
                            p for p in allowed if not smoke or p + SMOKE_SUFFIX in study.presets))
    return name


def cells_of(args: argparse.Namespace, study: Study, preset: str) -> list[Cell]:
    return locate(study.cells(preset), pairs(args.data, "--data"),
                  pairs(args.sha256, "--sha256"))


def engine_options(args: argparse.Namespace) -> EngineOptions:
    if not args.cpus_per_cell.isdigit() or int(args.cpus_per_cell) < 1:
        raise UserError(f"CPUS_PER_CELL = {args.cpus_per_cell!r} is not allowed; expected a "
                        "whole number of cores, 1 or more")
    return EngineOptions(git_remote=args.git_remote or None, dvc_remote=args.dvc_remote or None,
                         cpus_per_cell=int(args.cpus_per_cell))


def run(args: argparse.Namespace, cells: list[Cell], params: dict) -> list[Cell]:
    """The cells of this shard that have no experiment yet, longest first, on the chosen engine
    (checked against its devices, then the pre-flight, before anything is queued), one study
    at a time in a project; returns them (none: every cell had run)."""
    options = engine_options(args)
    engine = make_engine(args.engine, options)
    with study_lock():
        if options.git_remote:
            fetch_experiments(options.git_remote)
        todo = cells_to_run(parse_shard(args.shard).take(cells))
        if not todo:
            return todo
        try:
            with engine:   # Ray: connected (or started) until the cells are done
                todo = longest_first(todo, preflight(todo, params, engine.capacity(todo)))
                _, failed = engine.run(todo)
        except KeyboardInterrupt:
            print("interrupted; queued cells stopped, re-run to resume", file=sys.stderr)
            sys.exit(INTERRUPTED)
    if failed:      # no report, no README results from an incomplete grid
        raise SystemExit(f"error: {len(failed)} of {len(todo)} cells failed or were lost ("
                         f"{shortlist(failed)}; their logs are above); re-run to retry them, "
                         "the finished ones are kept")
    return todo


def run_in_waves(args: argparse.Namespace, study: Study, preset: str, cells: list[Cell],
                 params: dict) -> None:
    """--sequential: the cells of the next look (sequential.next_wave) until the last look
    is taken; each wave runs as a study of its own (the engine, the pre-flight), then its
    claims are read to choose the arms of the next."""
    if args.shard != "1/1":
        raise UserError(f"SHARD = {args.shard!r} is not allowed with SEQUENTIAL=1; expected "
                        "1/1 (each look needs every cell of its wave before the next starts)")
    while todo := next_wave(cells, read_sequentially(study, preset, read_results(cells)[0])):
        if not run(args, todo, params):   # every cell is there, yet the look cannot be taken
            raise SystemExit("error: the experiments of the next look are there but cannot "
                             "be read (see the warnings above); re-run them or remove them")


def shortlist(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown
                                       else "")


def longest_first(cells: list[Cell], seconds: dict[str, float]) -> list[Cell]:
    """The cells the pre-flight timed, longest first, then those it could not time."""
    by_name = {c.name: c for c in cells}
    return [by_name[n] for n in schedule.longest_first(seconds)] + [
        c for c in cells if c.name not in seconds]


@stage_main
def main() -> None:
    args = arguments()
    params = load_params()
    study = load_study(params=params)
    if args.command == "calibrate":
        metrics = tuple(args.metric or METRICS)
        if args.sequential:
            print(sequential_table(calibrate_sequential(
                args.studies, study, designs=sequential_designs(args.design or []),
                metrics=metrics), study))
        else:
            print(table(calibrate(args.studies, study, designs=tuple(args.design or DESIGNS),
                                  metrics=metrics), study))
        return
    preset = preset_name(study, args.preset, args.smoke)
    cells = cells_of(args, study, preset)
    if args.command == "preflight":
        with make_engine(args.engine, engine_options(args)) as engine:
            preflight(cells, params, engine.capacity(cells))
        return
    if args.command == "run":
        if args.sequential:
            run_in_waves(args, study, preset, cells, params)
        else:
            run(args, cells, params)
        return
    results, missing = read_results(cells)
    read = read_sequentially(study, preset, results) if args.sequential and results else None
    if read is not None and read.finished:   # the cells a stopped arm saved are not missing
        missing = [c for c in missing if c.name in read.ran]
    command = "make study" + ("" if args.preset == "quick" else f" PRESET={args.preset}") + (
        " SMOKE=1" if args.smoke else "") + (" SEQUENTIAL=1" if args.sequential else "")
    if not results:   # nothing to report: the report, its figures and the README stay as they are
        log.warning("no experiments found for preset %s (%d cells, none readable here); nothing "
                    "written: run them with `%s`, or fetch them with `dvc exp pull <remote>`",
                    preset, len(cells), command)
        return
    block = (build_report(study, preset, results, len(missing), command,
                          [d.result for d in read.decisions], summary(read))
             if read is not None else build_report(study, preset, results, len(missing), command))
    print(block)
    log.info("wrote %s", report_path(study, preset))
    if "report" in study.presets[preset]:       # a report of its own: the README is not its
        return
    if missing:
        log.warning("the README's results are left as they were: %d of %d cells have no "
                    "experiment here (%s); run them with `%s`", len(missing), len(cells),
                    shortlist([c.name for c in missing]), command)
    elif update_readme(block):
        log.info("wrote the README's results")


if __name__ == "__main__":
    main()
