"""The study: its definition, statistics on inputs with known answers, verdicts, and the report
on synthetic experiment results whose verdicts are known."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import nct, ttest_rel
from scipy.stats import t as t_dist
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from fashionbg.core.errors import UserError
from fashionbg.segment.metrics import ConfusionMatrix
from fashionbg.study.plan.definition import load_study, locate
from fashionbg.study.read import stats
from fashionbg.study.read.report import (
    arm_gain,
    build_report,
    evaluate_claims,
    group,
    update_readme,
)
from fashionbg.study.read.results import CellResult
from fashionbg.study.run.runner import parse_shard
from fashionbg.study.run.workspace import override

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_study_is_valid_and_its_cells_unique():
    study = load_study(ROOT / "study.yaml", PARAMS)
    for preset in study.presets:
        names = [c.name for c in study.cells(preset)]
        assert len(names) == len(set(names))
    quick = study.cells("quick")
    claimed = {c.arm for c in study.claims} | {c.baseline for c in study.claims} - {None}
    assert claimed <= {c.arm.name for c in quick}     # quick covers every claim's arms
    assert {c.variant for c in quick} == {"original", "rembg"}
    backgrounds = study.cells("backgrounds")
    assert {c.variant for c in backgrounds} == {"original", "rembg", "oracle", "mixed_rand"}
    instance = [c for c in quick if c.arm.task == "instance"]
    assert {c.seed for c in instance} == {0, 1, 2} and instance[0].params["segment.epochs"] == 6
    for preset in ("quick", "paper"):   # enough seeds for a verdict on every claim's arm
        seeds = {a: {c.seed for c in study.cells(preset) if c.arm.name == a} for a in claimed}
        assert min(map(len, seeds.values())) >= stats.MIN_SEEDS, (preset, seeds)
    assert instance[0].stage == "evaluate_segmenter"


def test_a_key_params_yaml_lacks_is_refused(tmp_path):
    text = (ROOT / "study.yaml").read_text().replace("classify.batchnorm: false",
                                                     "classify.batchnrm: false", 1)
    (tmp_path / "study.yaml").write_text(text)
    with pytest.raises(UserError, match="classify.batchnrm is not a key of params.yaml"):
        load_study(tmp_path / "study.yaml", PARAMS)


def test_shards_partition_the_cells():
    cells = load_study(ROOT / "study.yaml", PARAMS).cells("quick")
    shards = [parse_shard(f"{i}/3").take(cells) for i in (1, 2, 3)]
    assert sorted(c.name for s in shards for c in s) == sorted(c.name for c in cells)
    with pytest.raises(UserError, match="SHARD = '4/3'"):
        parse_shard("4/3")


@pytest.mark.parametrize("value", [
    [224, 224], False, None, 0.5, "resnet18", "null", "1.5", "/data/a b/c,d.zip", "it's",
    "C:\\data\\", "x=y:z{a}[b]", "/données/ü.zip", ["shirt, blouse", "pants"]])
def test_overrides_reach_params_yaml_as_they_are(tmp_path, value):
    from dvc.utils.hydra import apply_overrides

    (tmp_path / "params.yaml").write_text("data:\n  path: null\n")
    apply_overrides(tmp_path / "params.yaml", [override("data.path", value)])
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]["path"] == value


def test_an_override_that_omegaconf_would_resolve_is_refused():
    with pytest.raises(UserError, match="data.path = '/x/\\$\\{oc.env:HOME\\}' is not allowed"):
        override("data.path", "/x/${oc.env:HOME}")


def test_smoke_preset_keeps_arms_variants_and_claims_with_tiny_settings():
    study = load_study(ROOT / "study.yaml", PARAMS)
    paper, smoke = study.cells("paper"), study.cells("paper-smoke")
    assert {c.arm.name for c in smoke} == {c.arm.name for c in paper}
    assert {(c.arm.name, c.variant) for c in smoke} == {(c.arm.name, c.variant) for c in paper}
    assert {c.seed for c in smoke} == set(range(stats.MIN_SEEDS))   # every claim is tested
    for cell in smoke:
        assert cell.params.get("data.max_images")
        same = next(c for c in paper if c.arm == cell.arm and c.variant == cell.variant)
        for key in ("data.source", "data.variants", "data.mask_grouping",
                    "segment.instance_classes"):
            assert cell.params.get(key) == same.params.get(key)
        epochs = "classify.epochs" if cell.arm.task == "classify" else "segment.epochs"
        assert cell.params[epochs] == 1
    assert study.presets["paper-smoke"]["report"] == "reports/study-paper-smoke.md"
    assert not {c.name for c in smoke} & {c.name for c in paper}


def test_data_said_once_reaches_every_cell_that_reads_it_and_not_the_name(tmp_path):
    study = load_study(ROOT / "study.yaml", PARAMS)
    cells = study.cells("paper")
    placed = locate(cells, {"fashionstyle14": str(tmp_path / "fs14.zip"),
                            "fashionpedia": "https://example.org/fp/"},
                    {"fashionstyle14": "ab" * 32})
    for before, after in zip(cells, placed):
        assert after.name == before.name and after.params == before.params
        if before.params["data.source"] == "fashionstyle14":
            assert after.where == {"data.path": str(tmp_path / "fs14.zip"),
                                   "data.sha256": "ab" * 32}
        else:
            assert after.where == {"data.url": "https://example.org/fp/"}
    with pytest.raises(UserError, match="FASHIONPEDIA is given but no cell of this preset"):
        locate(study.cells("quick"), {"fashionpedia": "/data/fp"}, {})


def test_score_interval_stays_inside_the_bounds_and_is_the_t_interval_on_the_logit_scale():
    # mean 0.5 at the logit's centre: se 0.1/sqrt(3) → logit se 0.2309, t(0.975, 2) = 4.302653
    found = stats.seed_level([0.4, 0.5, 0.6])
    interval = stats.score_interval(found)
    half = t_dist.ppf(0.975, 2) * found.se / 0.25
    assert interval.low == pytest.approx(1 / (1 + np.exp(half)))
    assert interval.high == pytest.approx(1 / (1 + np.exp(-half)))
    near_zero = stats.score_interval(stats.seed_level([0.0, 0.05, 0.3]))   # t: −0.27
    assert 0 < near_zero.low < near_zero.estimate < near_zero.high < 1
    assert stats.score_interval(stats.seed_level([0.5])).low is None


def test_gain_intervals_are_cut_at_the_most_a_score_difference_can_be():
    wide = stats.seed_gain([1.0, 0.2, 1.0], [0.0, 0.0, 0.0])
    assert wide.interval.high == 1.0 and wide.interval.low > -1.0
    assert stats.seed_interaction(([1.0, 0.0, 1.0], [0.0] * 3), ([0.0] * 3, [1.0, 0.0, 1.0])
                                  ).interval.high <= 2.0


def test_seed_t_test_matches_known_p_value():
    # t = 0.2 / (0.1 / sqrt(3)) = 3.4641 on 2 df: two-sided p = 0.07418.
    effect = stats.seed_gain([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert effect.p == pytest.approx(0.07418, abs=1e-4)
    assert effect.interval.estimate == pytest.approx(0.2)
    assert effect.df == pytest.approx(2) and effect.se == pytest.approx(0.1 / np.sqrt(3))


def test_tost_is_statsmodels_ttost_paired_on_paired_data():
    rng = np.random.default_rng(3)
    for n, shift in [(5, 0.01), (8, 0.03), (20, -0.015)]:
        original = rng.random(n)
        rembg = original + shift + rng.normal(0, 0.02, n)
        expected = ttost_paired(rembg, original, -0.02, 0.02)[0]
        assert stats.seed_gain(list(rembg), list(original)).tost_p(-0.02, 0.02) == (
            pytest.approx(expected, rel=1e-9))
        # the same through the two-level path: one test image, so no image variance
        two_level = stats.gain(rembg[:, None], original[:, None])
        assert two_level.tost_p(-0.02, 0.02) == pytest.approx(expected, rel=1e-9)
        assert two_level.p == pytest.approx(ttest_rel(rembg, original).pvalue, rel=1e-9)


def test_holm_is_statsmodels_multipletests_and_the_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm(p, 0.05) == pytest.approx(list(multipletests(p, method="holm")[1]))
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone: 0.02, 0.03, 0.06, 0.06
    assert stats.holm(p, 0.05) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_two_level_standard_error_of_known_variance_components():
    """rembg − original = seed effect + image effect exactly (no residual): se² is the seeds'
    variance / S plus the images' (population) variance / N, the bootstrap's own target."""
    rng = np.random.default_rng(0)
    seed_effect, image_effect = rng.normal(0, 0.05, 4), rng.normal(0, 0.3, 400)
    rembg = seed_effect[:, None] + image_effect[None, :]
    found = stats.gain(rembg, np.zeros_like(rembg))
    assert found.residual == pytest.approx(0, abs=1e-9)
    assert found.seed_var == pytest.approx(seed_effect.var(ddof=1) / 4, rel=1e-6)
    assert found.image_var == pytest.approx(image_effect.var() / 400, rel=0.1)
    # only residual: independent coin flips, se² = 2 p (1 − p) / (S N)
    coins = [(rng.random((3, 2000)) < 0.5) * 1.0 for _ in range(2)]
    noise = stats.gain(*coins)
    assert noise.residual == pytest.approx(2 * 0.25 / 6000, rel=0.15)
    assert noise.image_var < 0.2 * noise.residual
    # the seeds' spread (2 degrees of freedom) carries the uncertainty: t on about 2 df, even
    # where it is below the residual term by chance (only below 3 seeds is it lifted)
    assert noise.spread < noise.residual
    assert noise.se ** 2 == pytest.approx(noise.spread, rel=0.2)
    assert noise.df == pytest.approx(2, rel=0.1)


def test_rembg_wins_are_counted_within_seeds_with_the_exact_sign_test():
    three = stats.paired_wins([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert (three.wins, three.seeds, three.p) == (3, 3, pytest.approx(0.25))   # 2 of 2^3 signs
    assert stats.paired_wins([0.5, 0.6, 0.4], [0.5, 0.5, 0.5]).p == pytest.approx(1.0)
    assert stats.paired_wins([0.5], [0.5]).p is None   # only ties: no test


def test_power_and_detectable_effect_are_the_noncentral_t():
    found = stats.seed_gain([0.50, 0.55, 0.45, 0.52, 0.48], [0.5] * 5)
    se, df = found.se, 4
    critical = t_dist.ppf(0.975, df)

    def power(delta):   # scipy's noncentral t, both tails
        return nct.sf(critical, df, delta / se) + nct.cdf(-critical, df, delta / se)

    mde = stats.detectable(found, 0.05, 0.8)
    assert power(mde) == pytest.approx(0.8, abs=1e-9)
    assert mde > (critical + t_dist.ppf(0.8, df)) * se   # the central-t shortcut is too small
    sd = se * np.sqrt(5)
    needed = stats.seeds_needed(found, 0.01, 0.05, 0.8)

    def power_ok(seeds):
        c = t_dist.ppf(0.975, seeds - 1)
        shift = 0.01 / (sd / np.sqrt(seeds))
        return nct.sf(c, seeds - 1, shift) + nct.cdf(-c, seeds - 1, shift) >= 0.8

    assert power_ok(needed) and not power_ok(needed - 1)
    assert stats.images_needed(found, 0.01, 0.05, 0.8) is None   # no per-image results


def test_a_target_the_test_images_alone_cannot_reach_is_said_so():
    """Images that vary a lot: even infinitely many seeds leave σ²_image/N."""
    rng = np.random.default_rng(0)
    rembg = rng.normal(0, 0.01, 3)[:, None] + rng.normal(0, 1.0, 50)[None, :]
    found = stats.gain(rembg, np.zeros_like(rembg))
    assert stats.seeds_needed(found, 0.05, 0.05, 0.8) == stats.UNREACHABLE
    assert stats.images_needed(found, 0.05, 0.05, 0.8) > 50
    assert stats.images_needed(found, 10.0, 0.05, 0.8, least=100) == 100   # never below


def test_resampled_miou_is_the_reported_miou():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 4, (6, 8, 8)))
    prediction = torch.where(torch.rand(6, 8, 8) < 0.7, target, torch.randint(0, 4, (6, 8, 8)))
    confusion = ConfusionMatrix(4, keep_images=True)
    confusion.update(target, prediction)
    terms = np.array([np.stack(image, axis=-1)
                      for image in confusion.images])[None]   # (1 seed, images, classes, 3)
    miou = stats.score(terms)
    assert miou == pytest.approx(confusion.compute(list("abcd"))["miou"], abs=1e-6)
    # a resample with repeats: the mIoU of the images listed that many times
    draw = np.array([0, 0, 3, 5, 5, 5])
    weights = np.bincount(draw, minlength=6)[None].astype(float)
    repeated = ConfusionMatrix(4)
    repeated.update(target[draw], prediction[draw])
    assert stats.seed_scores(terms, weights)[0, 0] == pytest.approx(
        repeated.compute(list("abcd"))["miou"], abs=1e-6)


def test_bootstrap_of_a_certain_gain_and_of_no_gain():
    ones, zeros = np.ones((3, 50)), np.zeros((3, 50))
    certain = stats.gain(ones, zeros)
    assert (certain.interval.estimate, certain.interval.low, certain.interval.high) == (1, 1, 1)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 2, (3, 200)).astype(float), rng.integers(0, 2, (3, 200)).astype(float)
    none = stats.gain(*noise)
    assert none.interval.low < 0 < none.interval.high and none.p > 0.01
    strong = stats.gain((rng.random((3, 200)) < 0.9).astype(float),
                        (rng.random((3, 200)) < 0.5).astype(float))
    assert strong.interval.low > 0.2 and strong.p < 0.01   # t on about 2 df: 3 seeds


def known(estimate, se):
    """An effect with this estimate and standard error on about normal quantiles."""
    return stats.Effect(estimate, 10_000, 0, se ** 2, 0.0, 0.0)   # spread only


@pytest.mark.parametrize("estimate, se, expect, verdict, test", [
    (0.05, 0.01, "positive", "supported", "δ ≠ 0"),           # z = 5
    (-0.05, 0.01, "positive", "refuted", "δ ≠ 0"),
    (0.0, 0.01, "positive", "minimal", "TOST −Δ < δ < +Δ"),     # 90 % CI ±0.0165 inside ±Δ
    (0.008, 0.002, "positive", "minimal", "TOST −Δ < δ < +Δ"),  # a gain, shown below +Δ
    (0.015, 0.01, "positive", "inconclusive", None),
    (-0.05, 0.01, "negative", "supported", "δ ≠ 0"),
    (0.05, 0.01, "negative", "refuted", "δ ≠ 0"),
    (0.0, 0.01, "negative", "minimal", "TOST −Δ < δ < +Δ"),
    (0.0, 0.01, "not_positive", "supported", "non-superiority δ < +Δ"),
    (-0.08, 0.01, "not_positive", "supported", "non-superiority δ < +Δ"),
    (0.06, 0.01, "not_positive", "refuted", "δ > +Δ"),         # lower bound above +Δ
    (0.02, 0.01, "not_positive", "inconclusive", None),
    (0.0, 0.01, "equivalent", "supported", "TOST −Δ < δ < +Δ"),
    (-0.06, 0.01, "equivalent", "refuted", "|δ| > Δ"),
    (0.012, 0.01, "equivalent", "inconclusive", None),
])
def test_verdicts(estimate, se, expect, verdict, test):
    tests = stats.claim_tests(known(estimate, se), expect, 0.02)
    decided, which = stats.decide(tests, [t.p for t in tests], 0.05)
    assert decided == verdict
    assert (None if which is None else tests[which].name) == test
    assert stats.claim_tests(stats.seed_gain([0.5], [0.4]), expect, 0.02) == []   # one seed


def test_verdict_words_are_distinct():
    """No verdict contains another ("not supported" contained "supported")."""
    assert len(set(stats.VERDICTS)) == 4
    assert not [(a, b) for a in stats.VERDICTS for b in stats.VERDICTS if a != b and a in b]


def test_holm_over_every_decisive_test_decides_the_verdict():
    found = known(0.025, 0.01)    # two-sided p 0.012: supported among its own 2 tests, not 8
    tests = stats.claim_tests(found, "positive", 0.02)
    ps = [t.p for t in tests]
    assert stats.decide(tests, stats.holm(ps, 0.05), 0.05)[0] == "supported"
    assert stats.decide(tests, stats.holm(ps + [0.5] * 6, 0.05)[:2], 0.05)[0] == "inconclusive"


def test_two_seeds_that_agree_by_chance_give_a_p_that_does_not_depend_on_the_resamples():
    """/work/shared/fixtures/two-seeds-agree.npz in miniature: two seeds whose differences
    agree far more closely than the per-image noise allows. Their spread is lifted to the
    residual term (the seed component floored at zero) and df is at least S − 1."""
    rng = np.random.default_rng(5)
    original = rng.random((1, 300)).repeat(2, axis=0)
    noise = rng.normal(0, 0.15, (2, 300))
    noise[1] += noise[0].mean() - noise[1].mean()   # the seeds' mean differences agree
    rembg = original + 0.04 + noise
    found = {b: stats.gain(rembg, original, b) for b in (2000, 20000)}
    assert found[2000].spread < 1e-12 < found[2000].residual
    assert found[2000].df >= 1 and found[20000].df >= 1
    assert found[2000].p == pytest.approx(found[20000].p, rel=0.05)
    assert found[2000].p > 0.05     # two seeds, one degree of freedom: no strong claim
    assert abs(found[20000].interval.high) < 1


SYNTHETIC_STUDY = """
variants: [original, rembg]
minimal_effect: 0.02
arms:
  shallow: {task: classify, about: shallow, params: {classify.batchnorm: false}}
  shallow_bn: {task: classify, about: with batch norm, params: {classify.batchnorm: true}}
  instance: {task: instance, about: mask r-cnn, params: {segment.task: instance}}
claims:
  - {id: a, claim: helps shallow nets, test: gain, arm: shallow, expect: positive}
  - {id: b, claim: not with batch norm, test: interaction, arm: shallow_bn, baseline: shallow,
     expect: negative}
  - {id: c, claim: instance not helped, test: gain, arm: instance, expect: not_positive}
presets:
  s: {about: synthetic, seeds: [0, 1, 2], arms: {shallow: {}, shallow_bn: {}, instance: {}}}
"""


def synthetic_results(study, instance_spread: float = 0.002):
    """shallow: 40 % → 80 % correct with removal; shallow_bn: 60 % both ways; instance: mask
    AP a little lower with removal, every seed (by 0.05 plus `instance_spread` per seed)."""
    rng = np.random.default_rng(0)
    accuracy = {("shallow", "original"): 0.4, ("shallow", "rembg"): 0.8,
                ("shallow_bn", "original"): 0.6, ("shallow_bn", "rembg"): 0.6}
    images = tuple(f"images/{i:03d}.jpg" for i in range(300))
    results = []
    for cell in study.cells("s"):
        if cell.arm.task == "instance":
            loss = 0.05 + instance_spread * cell.seed
            ap = 0.30 - loss * (cell.variant == "rembg") + 0.01 * cell.seed
            results.append(CellResult(cell, ap, ap - 0.1, None, (), {}, {}))
            continue
        correct = (rng.random(len(images)) < accuracy[(cell.arm.name, cell.variant)]) * 1.0
        results.append(CellResult(cell, correct.mean(), 0.2, correct, images,
                                  {cell.variant: correct.mean()}, {cell.variant: correct}))
    return results


def exactly(share: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n 0/1 results of which exactly `share` are 1, in random order."""
    return rng.permutation((np.arange(n) < round(share * n)) * 1.0)


# Accuracy of the shallow arm by training variant (rows) and test variant (columns).
BACKGROUND_ACCURACY = {
    "original": {"original": 0.4, "rembg": 0.3, "only_bg": 0.5, "no_fg": 0.25,
                 "mixed_same": 0.7, "mixed_rand": 0.3},
    "rembg": {"original": 0.5, "rembg": 0.6, "only_bg": 0.2, "mixed_same": 0.6,
              "mixed_rand": 0.6},
    "oracle": {"original": 0.5, "oracle": 0.7, "only_bg": 0.2, "mixed_same": 0.6,
               "mixed_rand": 0.6},
    "mixed_rand": {"original": 0.35, "only_bg": 0.1, "mixed_same": 0.5, "mixed_rand": 0.5},
}
# mIoU of the semantic arm (trained on either variant), by test variant and seed: a BG-gap of
# 0.20 ± 0.01 over seeds and 0.11 on no_fg (no per-image results: paired over seeds).
SEGMENTER_MIOU = {"original": (0.6, 0.61, 0.62), "mixed_same": (0.5, 0.51, 0.52),
                  "mixed_rand": (0.3, 0.3, 0.33), "no_fg": (0.1, 0.11, 0.12)}


def background_report(tmp_path: Path, monkeypatch, study_text: str) -> str:
    """reports/study-bg.md of a synthetic study: classifiers scored as BACKGROUND_ACCURACY
    says on 200 images, the semantic arm as SEGMENTER_MIOU says."""
    (tmp_path / "study.yaml").write_text(study_text)
    study = load_study(tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    images = tuple(f"images/{i:03d}.jpg" for i in range(200))
    results = []
    for cell in study.cells("s"):
        if cell.arm.task == "semantic":
            scores = {v: miou[cell.seed] for v, miou in SEGMENTER_MIOU.items()}
            results.append(CellResult(cell, scores["original"], 0.2, None, (), scores, {}))
            continue
        tested = {v: exactly(a, len(images), rng)
                  for v, a in BACKGROUND_ACCURACY[cell.variant].items()}
        own = tested[cell.variant] if cell.variant in tested else tested["original"]
        results.append(CellResult(cell, own.mean(), 0.0, own, images,
                                  {v: x.mean() for v, x in tested.items()}, tested))
    build_report(study, "s", results, 0, "make study PRESET=s")
    return (tmp_path / "reports/study-bg.md").read_text()


def test_background_section_gives_the_known_gaps_and_decomposition(tmp_path, monkeypatch):
    """A BG-gap of +0.4 for the photo-trained model and 0 for the mixed_rand-trained one;
    rembg − original = +0.2 splits into removal +0.3 and SOD error −0.1; the segmenter's
    BG-gap (mIoU on mixed_same − mixed_rand) and no-FG mIoU."""
    study_text = SYNTHETIC_STUDY.replace(
        "arms: {shallow: {}, shallow_bn: {}, instance: {}}",
        "report: reports/study-bg.md, arms: {shallow: {variants: [original, rembg, oracle, "
        "mixed_rand]}, semantic: {variants: [original, rembg]}}").replace(
        "  instance:", "  semantic: {task: semantic, about: fpn, params: {segment.task: "
        "semantic}}\n  instance:")
    report = background_report(tmp_path, monkeypatch, study_text)
    rows = [line for line in report.splitlines() if line.startswith("| `shallow` |")]
    gaps = {line.split(" | ")[2]: line.split(" | ")[3] for line in rows[:4]}
    assert gaps["original"].startswith("+0.400 [") and gaps["mixed_rand"].startswith("+0.000")
    assert rows[0].split(" | ")[1] == "top1"
    assert rows[0].endswith("| 0.500 [0.500, 0.500] | 0.250 [0.250, 0.250] |")  # 3 seeds
    assert rows[1].endswith("| 0.200 [0.200, 0.200] | – |")   # the rembg-trained: no no_fg
    split = rows[4].split(" | ")
    assert [part[:6] for part in split[1:4]] == ["+0.200", "+0.300", "-0.100"], rows[4]
    assert rows[5].split(" | ")[1].startswith("-0.400 [")        # the remedy closes the gap
    assert rows[5].split(" | ")[2].startswith("-0.050 [")        # at a cost on the photos
    segmenter = [line for line in report.splitlines() if line.startswith("| `semantic` |")]
    _, metric, trained_on, gap, only_bg, no_fg = segmenter[0].strip("| ").split(" | ")
    assert (metric, trained_on, only_bg) == ("miou", "original", "–")
    assert gap.startswith("+0.200 [") and no_fg.startswith("0.110 [")
    assert (tmp_path / "reports/study-bg/variants.png").read_bytes()[:4] == b"\x89PNG"
    assert "](study-bg/variants.png)" in report


def test_background_section_leaves_out_the_tables_no_arm_was_trained_for(tmp_path, monkeypatch):
    """Arms trained on original and rembg only (the quick preset): the BG-gap table, but no
    removal / SOD-error split (needs oracle) and no remedy (needs mixed_rand) with empty rows."""
    report = background_report(tmp_path, monkeypatch, SYNTHETIC_STUDY.replace(
        "arms: {shallow: {}, shallow_bn: {}, instance: {}}",
        "report: reports/study-bg.md, arms: {shallow: {variants: [original, rembg]}}"))
    assert "| arm | metric | trained on | BG-gap" in report
    assert "What the rembg effect splits into" not in report and "The remedy" not in report
    assert "|---|---|---|---|\n\n" not in report and "|---|---|---|\n\n" not in report


def test_report_on_synthetic_results_gives_the_known_verdicts(tmp_path, monkeypatch):
    (tmp_path / "study.yaml").write_text(SYNTHETIC_STUDY)
    study = load_study(tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# x\n<!-- study:begin -->\nold\n<!-- study:end -->\n")
    block = build_report(study, "s", synthetic_results(study), 0, "make study PRESET=s")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in block.splitlines()}
    assert "| **supported** |" in rows["helps shallow nets"]
    assert "| **supported** |" in rows["not with batch norm"]
    assert "| **supported** |" in rows["instance not helped"]
    assert "non-superiority δ < +Δ" in rows["instance not helped"]
    assert "| δ ≠ 0: " in rows["helps shallow nets"]
    assert (tmp_path / "reports/study.md").read_text().count("**supported**") == 3
    assert (tmp_path / "reports/study/forest.png").read_bytes()[:4] == b"\x89PNG"
    assert update_readme(block, tmp_path / "README.md")
    readme = (tmp_path / "README.md").read_text()
    assert "old" not in readme and "helps shallow nets" in readme


def test_report_rows_print_the_deciding_test_and_refuse_a_verdict_below_three_seeds(
        tmp_path, monkeypatch):
    """Each row names the test that decides it with its raw and Holm-adjusted p (Holm over
    the two tests of each of the three claims); with two seeds every row says why it has no
    verdict; raw p-values elsewhere are marked unadjusted."""
    (tmp_path / "study.yaml").write_text(SYNTHETIC_STUDY)
    study = load_study(tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    claims = evaluate_claims(study, "s", group(synthetic_results(study)),
                             {n: arm_gain(a) for n, a in group(synthetic_results(study)).items()})
    every = [t.p for r in claims for t in stats.claim_tests(r.effect, r.claim.expect, 0.02)]
    assert [r.adjusted for r in claims] == [stats.holm(every, 0.05)[i] for i in (1, 3, 4)]
    block = build_report(study, "s", synthetic_results(study), 0, "make study PRESET=s")
    assert f"δ ≠ 0: {claims[0].p:.2g} ({claims[0].adjusted:.2g}) | **supported**" in block
    assert "p, unadjusted" in block and "exact sign test p, unadjusted" in block
    (tmp_path / "study.yaml").write_text(SYNTHETIC_STUDY.replace("seeds: [0, 1, 2]",
                                                                 "seeds: [0, 1]"))
    two = load_study(tmp_path / "study.yaml")
    block = build_report(two, "s", synthetic_results(two), 0, "make study PRESET=s")
    rows = [line for line in block.splitlines() if line.startswith("| helps") or
            line.startswith("| not with") or line.startswith("| instance not")]
    assert len(rows) == 3 and all("(fewer than 3 seeds: no verdict) | **inconclusive** |" in r
                                  for r in rows), rows
    assert "| δ ≠ 0: " in rows[0]   # the claim's own test, its p unadjusted


def test_scores_that_do_not_vary_get_no_test_and_no_verdict(tmp_path, monkeypatch):
    """The same loss of mask AP at every seed (no per-image results): a standard error of 0,
    which would give p = 0 and "supported" however little the models learned (the paper
    smoke run's one-epoch Mask R-CNN scores 0 everywhere)."""
    (tmp_path / "study.yaml").write_text(SYNTHETIC_STUDY)
    study = load_study(tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    flat = group(synthetic_results(study, instance_spread=0.0))
    effect = arm_gain(flat["instance"])
    assert effect.se == 0 and not effect.testable and effect.p is None
    assert stats.claim_tests(effect, "not_positive", 0.02) == []
    assert stats.detectable(effect, 0.05, 0.8) is None
    claims = evaluate_claims(study, "s", flat, {n: arm_gain(a) for n, a in flat.items()})
    row = claims[-1]
    assert (row.test, row.p, row.adjusted, row.verdict) == (
        "every score alike: no test", None, None, stats.INCONCLUSIVE)
    assert [r.verdict for r in claims[:2]] == [stats.SUPPORTED, stats.SUPPORTED]


def test_a_cell_missing_from_the_queue_for_a_moment_is_still_pending():
    from fashionbg.study.run.runner import LOST_POLLS, MISSING, cell_states

    names, unseen = {"running", "between", "finished"}, dict.fromkeys(
        {"running", "between", "finished"}, 0)
    states = cell_states(names, {"running": "Running"}, {"finished": "abc"}, unseen, workers=1)
    assert states == {"running": "Running", "between": MISSING, "finished": "Success"}
    for _ in range(LOST_POLLS - 1):    # no worker alive, still missing: not yet given up
        assert cell_states(names, {}, {"finished": "abc"}, unseen, workers=0)["between"] == MISSING
    assert cell_states(names, {}, {"finished": "abc"}, unseen, workers=0)["between"] == "Failed"


SPLIT_STUDY = SYNTHETIC_STUDY.replace("s: {about: synthetic,",
                                      "s: {about: synthetic, split_seeds: true,")


def test_split_seeds_make_the_split_a_factor_of_the_study(tmp_path):
    """Each cell's seed also sets data.seed, the same for both variants of a seed (so they stay
    paired), and a preset or arm that fixes data.seed as well is refused."""
    (tmp_path / "study.yaml").write_text(SPLIT_STUDY)
    cells = load_study(tmp_path / "study.yaml").cells("s")
    assert all(c.params["data.seed"] == c.seed for c in cells)
    (tmp_path / "study.yaml").write_text(SYNTHETIC_STUDY)
    fixed = load_study(tmp_path / "study.yaml").cells("s")
    assert all("data.seed" not in c.params for c in fixed)
    assert {c.name for c in cells}.isdisjoint(c.name for c in fixed)
    for change, key in (("split_seeds: true, params: {data.seed: 3},",
                         "presets.s.params.data.seed"),
                        ("split_seeds: 2,", "presets.s.split_seeds")):
        (tmp_path / "study.yaml").write_text(SYNTHETIC_STUDY.replace(
            "s: {about: synthetic,", f"s: {{about: synthetic, {change}"))
        with pytest.raises(UserError, match=f"{key} = .* is not allowed") as err:
            load_study(tmp_path / "study.yaml")
        assert "\n" not in str(err.value)


def test_with_split_seeds_each_difference_is_the_paired_t_test_over_seeds(tmp_path, monkeypatch):
    """Seeds with different test images (their own splits) are not paired by image: the gain
    is scipy's paired t-test of the seeds' scores, and the methods say why."""
    (tmp_path / "study.yaml").write_text(SPLIT_STUDY)
    study = load_study(tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    results = []
    for cell in study.cells("s"):
        if cell.arm.task == "instance":
            continue
        images = tuple(f"images/{cell.seed}-{i:03d}.jpg" for i in range(100))   # its own split
        correct = (rng.random(100) < 0.4 + 0.2 * (cell.variant == "rembg")) * 1.0
        results.append(CellResult(cell, correct.mean(), 0.2, correct, images,
                                  {cell.variant: correct.mean()}, {cell.variant: correct}))
    arms = group(results)
    assert arms["shallow"].per_image is None
    found = arm_gain(arms["shallow"])
    scores = arms["shallow"].scores
    assert found.p_value() == pytest.approx(ttest_rel(scores["rembg"], scores["original"]).pvalue)
    build_report(study, "s", results, 0, "make study PRESET=s")
    assert "each difference is a paired t-test over seeds" in (
        tmp_path / "reports/study.md").read_text()


HOSTILE = "<!-- study:end --> | cell\n<script>x</script> [link](http://x) *b* `c` &amp; \\"


def test_study_yaml_text_in_the_readme_is_text(tmp_path, monkeypatch):
    """A preset's and an arm's `about:` with markers, `|`, newlines, HTML and Markdown: shown
    as typed, on one line, breaking neither the block's markers nor its table."""
    from fashionbg.study.read.report import text

    study_yaml = yaml.safe_load(SYNTHETIC_STUDY)
    study_yaml["presets"]["s"]["about"] = HOSTILE
    next(iter(study_yaml["arms"].values()))["about"] = HOSTILE
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study_yaml))
    study = load_study(tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# x\n<!-- study:begin -->\nold\n<!-- study:end -->\n")
    block = build_report(study, "s", synthetic_results(study), 0, "make study PRESET=s")
    assert update_readme(block, tmp_path / "README.md")
    readme = (tmp_path / "README.md").read_text()
    for marker in ("<!-- study:begin -->", "<!-- study:end -->"):
        assert readme.count(marker) == 1
    assert "<script>" not in readme and "\n<" not in block
    assert text(HOSTILE) in block.splitlines()[0]
    table = [line for line in block.splitlines() if line.startswith("| `")]
    assert table and all(line.count(" | ") == table[0].count(" | ") for line in table)
    assert update_readme(block, tmp_path / "README.md")      # and again: still one pair


@pytest.mark.parametrize("readme", [
    "<!-- study:begin -->\n<!-- study:end -->\n<!-- study:end -->\n",
    "<!-- study:begin -->\n<!-- study:begin -->\n<!-- study:end -->\n",
    "<!-- study:end -->\n<!-- study:begin -->\n",
    "<!-- study:begin -->\nno end\n",
])
def test_the_readme_markers_must_be_one_pair_or_the_report_refuses(tmp_path, readme):
    (tmp_path / "README.md").write_text(readme)
    with pytest.raises(UserError, match="keep exactly one pair") as err:
        update_readme("new", tmp_path / "README.md")
    assert "\n" not in str(err.value)
    assert (tmp_path / "README.md").read_text() == readme
    (tmp_path / "README.md").write_text("no markers\n")
    assert not update_readme("new", tmp_path / "README.md")
