"""The sequential study (fashionbg.study.read.sequential): its looks, the α each spends, a
claim decided at the first look whose spent level decides it and the cells its arm saves, and
the family-wise error over all looks on simulated null studies."""
import argparse
import gc
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

import fashionbg.study.__main__ as cli
from fashionbg.study.__main__ import main
from fashionbg.study.plan.definition import load_study
from fashionbg.study.read.calibrate import (
    REGIMES,
    calibration_study,
    false_verdict,
    simulate,
    truth_of,
)
from fashionbg.study.read.report import arm_gain, build_report, evaluate_claims, group
from fashionbg.study.read.sequential import (
    levels,
    looks,
    next_wave,
    obrien_fleming,
    read_sequentially,
    summary,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def frozen_gc():
    """statsmodels' Holm calls gc.collect() at every look: keep it from walking the test
    session's objects (as calibrate does), which makes a look five times slower."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.6, 0.8, 1.0])
def test_obrien_fleming_spends_as_its_formula(fraction):
    expected = 2 - 2 * norm.cdf(norm.ppf(1 - 0.05 / 2) / np.sqrt(fraction))
    assert obrien_fleming(fraction, 0.05) == pytest.approx(expected, rel=1e-9)


def test_obrien_fleming_at_known_points():
    """Half the information spends 0.0056 of 0.05 (Lan & DeMets 1983's table); none, 0; all, α."""
    assert obrien_fleming(0.5, 0.05) == pytest.approx(0.00557, abs=5e-5)
    assert obrien_fleming(0.0, 0.05) == 0.0
    assert obrien_fleming(1.0, 0.05) == pytest.approx(0.05, rel=1e-12)


@pytest.mark.parametrize("seeds, expected", [(5, [3, 5]), (9, [3, 6, 9]), (10, [3, 6, 9, 10]),
                                             (3, [3]), (2, [2])])
def test_looks_start_at_three_seeds(seeds, expected):
    assert looks(seeds) == expected


@pytest.mark.parametrize("counts", [[3, 5], [3, 6, 9, 10], [5]])
def test_the_looks_spend_alpha_exactly(counts):
    spent = levels(counts, 0.05)
    assert len(spent) == len(counts) and all(level > 0 for level in spent)
    assert sum(spent) == pytest.approx(0.05, rel=1e-12)
    assert spent[0] == pytest.approx(obrien_fleming(counts[0] / counts[-1], 0.05), rel=1e-12)


def test_a_claim_decided_at_the_first_look_stops_its_arm():
    """The flat arm's huge gain refutes its 'not positive' claim on 3 of 5 seeds (1,000 test
    images), at the first look's spent level; the arm stops there and saves its last 2 seeds
    (4 of 40 cells)."""
    study = calibration_study(load_study(ROOT / "study.yaml"), 5)
    gains = {"base": 0.0, "combined": 0.0, "flat": 0.4, "even": 0.0}
    cells = simulate(study, gains, REGIMES["seeds vary less than images"], 1000,
                     np.random.default_rng(0))
    read = read_sequentially(study, "sim", cells)
    assert read.counts == [3, 5] and read.levels == levels([3, 5], study.alpha)
    flat = next(d for d in read.decisions if d.result.claim.id == "flat")
    assert (flat.look, flat.result.verdict) == (1, "refuted")
    assert flat.result.effect.seeds == 3 and flat.result.adjusted < read.levels[0]
    assert [d.result.claim.id for d in read.decisions] == ["gain", "combine", "flat", "even"]
    assert all(d.look is None for d in read.decisions if d.result.claim.id != "flat")
    assert all(d.result.effect.seeds == 5 for d in read.decisions if d.look is None)
    assert (len(read.ran), read.planned, read.saved) == (36, 40, pytest.approx(0.1))
    assert read.finished and read.stopped == {"flat": 3}


def test_the_first_look_tests_at_its_spent_level_not_at_alpha():
    """A flat gain of 0.1 that α = 0.05 would refute on the first 3 seeds is not decided at the
    first look, whose level is the 0.011 spent there."""
    study = calibration_study(load_study(ROOT / "study.yaml"), 5)
    gains = {"base": 0.0, "combined": 0.0, "flat": 0.1, "even": 0.0}
    cells = simulate(study, gains, REGIMES["seeds vary less than images"], 1000,
                     np.random.default_rng(0))
    arms = group([c for c in cells if c.cell.seed < 3])
    at_alpha = evaluate_claims(study, "sim", arms, {n: arm_gain(a) for n, a in arms.items()})
    assert next(r.verdict for r in at_alpha if r.claim.id == "flat") == "refuted"
    read = read_sequentially(study, "sim", cells)
    assert next(d.look for d in read.decisions if d.result.claim.id == "flat") != 1


def test_null_studies_keep_the_family_wise_error_over_all_looks():
    """100 simulated null studies of 5 seeds read at 3 and 5 seeds, each regime in half of them:
    a false claim in at most 12 (nominal 5 %)."""
    study = calibration_study(load_study(ROOT / "study.yaml"), 5)
    gains = dict.fromkeys(study.arms, 0.0)
    rng = np.random.default_rng(3)
    false = 0
    for i in range(100):
        spread = list(REGIMES.values())[i % 2]
        read = read_sequentially(study, "sim", simulate(study, gains, spread, 96, rng))
        false += any(false_verdict(d.result, truth_of(d.result, gains)) for d in read.decisions)
    assert false <= 12, false


def refusal(monkeypatch, capsys, *argv: str) -> str:
    """What `python -m fashionbg.study <argv>` prints, run here, where it must exit 2."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["fashionbg.study", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_sequential_calibration_refuses_a_design_with_one_look(monkeypatch, capsys):
    # a copy that accepts the design runs 60 small studies and fails, rather than hours
    assert refusal(monkeypatch, capsys, "calibrate", "--sequential", "--studies", "10",
                   "--metric", "top1", "--design", "3x96") == (
        "error: --design '3x96' is not allowed with --sequential; expected more than 3 seeds "
        "(the first look is at 3), e.g. 5x96\n")


def flat_decided_study():
    """The 5-seed study whose flat arm is decided at the first look, and its simulated cells."""
    study = calibration_study(load_study(ROOT / "study.yaml"), 5)
    gains = {"base": 0.0, "combined": 0.0, "flat": 0.4, "even": 0.0}
    return study, simulate(study, gains, REGIMES["seeds vary less than images"], 1000,
                           np.random.default_rng(0))


def test_the_next_wave_runs_only_the_undecided_arms():
    study, results = flat_decided_study()
    cells = study.cells("sim")
    first = read_sequentially(study, "sim", [])
    assert (first.taken, first.decisions, first.finished) == (0, [], False)
    assert {(c.arm.name, c.seed) for c in next_wave(cells, first)} == {
        (a, s) for a in study.arms for s in range(3)}
    after = read_sequentially(study, "sim", [r for r in results if r.cell.seed < 3])
    assert (after.taken, after.stopped, after.finished) == (1, {"flat": 3}, False)
    assert {(c.arm.name, c.seed) for c in next_wave(cells, after)} == {
        (a, s) for a in ("base", "combined", "even") for s in range(5)}
    done = read_sequentially(study, "sim", [r for r in results
                                            if r.cell.seed < 3 or r.cell.arm.name != "flat"])
    assert done.finished and next_wave(cells, done) == [] and len(done.ran) == 36


def test_a_sequential_run_queues_wave_after_wave(monkeypatch):
    """run_in_waves with the engine replaced by the simulated cells: 3 seeds of every arm,
    then seeds 3-4 of the arms whose claims are open, then the report's reading is final."""
    study, simulated = flat_decided_study()
    by_name = {r.cell.name: r for r in simulated}
    store: dict = {}
    waves = []

    def run(args, todo, params):
        missing = [c for c in todo if c.name not in store]
        waves.append(sorted({(c.arm.name, c.seed) for c in missing}))
        store.update({c.name: by_name[c.name] for c in missing})
        return missing

    monkeypatch.setattr(cli, "run", run)
    monkeypatch.setattr(cli, "read_results", lambda cells: ([store[c.name] for c in cells
                                                              if c.name in store], []))
    cli.run_in_waves(argparse.Namespace(shard="1/1"), study, "sim", study.cells("sim"), {})
    assert waves == [sorted((a, s) for a in study.arms for s in range(3)),
                     sorted((a, s) for a in ("base", "combined", "even") for s in (3, 4))]
    assert len(store) == 36


def test_a_wave_whose_experiments_are_there_but_unreadable_stops_the_run(monkeypatch):
    """Every cell of the next look has an experiment (run() finds nothing to run) yet none
    can be read: one error, not the same wave again and again."""
    study, _ = flat_decided_study()
    calls = []
    monkeypatch.setattr(cli, "run", lambda args, todo, params: calls.append(todo) and [])
    monkeypatch.setattr(cli, "read_results", lambda cells: ([], []))
    with pytest.raises(SystemExit, match="the experiments of the next look are there but"):
        cli.run_in_waves(argparse.Namespace(shard="1/1"), study, "sim", study.cells("sim"), {})
    assert len(calls) == 1


def test_a_sequential_run_refuses_a_shard(monkeypatch, capsys):
    assert refusal(monkeypatch, capsys, "run", "--sequential", "--shard", "2/4") == (
        "error: SHARD = '2/4' is not allowed with SEQUENTIAL=1; expected 1/1 (each look needs "
        "every cell of its wave before the next starts)\n")


def test_the_report_gives_the_sequential_verdicts_and_the_cells_saved(tmp_path, monkeypatch):
    study, results = flat_decided_study()
    results = [r for r in results if r.cell.seed < 3 or r.cell.arm.name != "flat"]
    read = read_sequentially(study, "sim", results)
    monkeypatch.chdir(tmp_path)
    block = build_report(study, "sim", results, 0, "make study SEQUENTIAL=1",
                         [d.result for d in read.decisions], summary(read))
    assert "looks at 3 seeds at level 0.0114, 5 seeds at level 0.0386" in block
    assert "2 of 2 looks taken; 36 of 40 cells used, 10% saved." in block
    assert "| flat | refuted | 1 (3) |" in block
    assert "| gain | inconclusive | not decided |" in block
    assert (tmp_path / "reports/study.md").read_text().count("| flat | refuted | 1 (3) |") == 1
