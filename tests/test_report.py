"""The headline metrics files (as the pipeline writes them, on the tests' tiny baseline) hold
only what the study compares, with one rounding; detail and per-class scores live elsewhere;
dvc.yaml declares the headline files as its only metrics."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc_render import VegaRenderer

from fashionbg.contracts.params import VARIANTS
from fashionbg.core import paths
from fashionbg.report.headline import DIGITS, own_and_cross, pick
from fashionbg.report.plots import per_class_bars

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
HEADLINE_KEYS = {   # file: the keys of its "test" and "cross" blocks (one of them)
    paths.CLASSIFICATION_METRICS: [{"top1", "top5", "macro_f1"}],
    paths.SEGMENTATION_METRICS: [{"miou"}, {"mask_ap"}],
}


def test_pick_rounds_once_and_keeps_missing_scores():
    assert pick({"a": 0.123456, "b": None, "c": 3, "d": "x"}, ("a", "b", "c")) == {
        "a": 0.1235, "b": None, "c": 3}
    assert own_and_cross({"k": 0.5, "other": 1}, {"k": None}, ("k",)) == {
        "test": {"k": 0.5}, "cross": {"k": None}}


def numbers(block: dict) -> bool:
    return all(v is None or (isinstance(v, (int, float)) and round(v, DIGITS) == v)
               for v in block.values())


@pytest.mark.parametrize("path", sorted(HEADLINE_KEYS, key=str))
def test_task_headline_files_hold_test_cross_and_background_reliance_only(path, tiny_baseline):
    data = json.loads((tiny_baseline / path).read_text())
    assert set(data) == {"test", "cross", "bg"}
    assert set(data["test"]) == set(data["cross"]) in HEADLINE_KEYS[path]
    assert set(data["bg"]) == {"gap", "only_bg", "no_fg"}
    assert numbers(data["test"]) and numbers(data["cross"]) and numbers(data["bg"])


def test_background_headline_is_small(tiny_baseline):
    data = json.loads((tiny_baseline / paths.BACKGROUND_METRICS).read_text())
    assert set(data) == {"failures", "mean_iou"} and numbers(data)


def test_dvc_yaml_declares_only_the_headline_files_as_metrics():
    """Top level, and remove_background's own (a stage whose uncached outputs are all metrics
    or plots keeps its run cache, so study cells share it)."""
    stage_metrics = [next(iter(m)) for s in DVC_YAML["stages"].values()
                     for m in s.get("metrics", [])]
    assert stage_metrics == [str(paths.BACKGROUND_METRICS)]
    assert DVC_YAML["metrics"] == [str(p) for p in (
        paths.CLASSIFICATION_METRICS, paths.SEGMENTATION_METRICS)]
    stage_plots = [next(iter(p)) for s in DVC_YAML["stages"].values() for p in s.get("plots", [])]
    assert stage_plots == [str(paths.SAMPLES)]
    assert {a["path"] for a in DVC_YAML["artifacts"].values()} == {
        str(paths.CLASSIFIER), str(paths.SEGMENTER)}


def test_per_class_bars_name_the_test_variant_and_skip_classes_without_score():
    bars = per_class_bars({"original": {"top": 0.5, "bag": None},
                           "rembg": {"top": 0.25, "bag": 1.0}})
    assert bars == [{"class": "top, tested on original", "score": 0.5},
                    {"class": "top, tested on rembg", "score": 0.25},
                    {"class": "bag, tested on rembg", "score": 1.0}]


def heatmap_cells(revisions: list[str]) -> list[tuple[float, float]]:
    """(width, height) in pixels of every cell of the train × test heatmap that `dvc plots`
    draws for `revisions`, each a model's row of eight test variants: the template filled by
    DVC's renderer, laid out by Vega-Lite itself (the page's vega packages, `make setup`)."""
    plot = next(p for p in DVC_YAML["plots"] if "plots/classifier/variants.json" in p)
    props = plot["plots/classifier/variants.json"]
    rows = [{"rev": rev, "trained_on": "original", "tested_on": v, "score": 0.271}
            for rev in revisions for v in VARIANTS]
    spec = VegaRenderer(rows, "variants", **{**props, "template": str(
        ROOT / ".dvc/plots" / f"{props['template']}.json")}).get_filled_template()
    svg = subprocess.run([str(ROOT / "node_modules/.bin/vl2svg")], input=json.dumps(spec),
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [(float(w), float(h)) for w, h in re.findall(
        r'aria-roledescription="rect mark" d="M[-\d.]+,[-\d.]+h([\d.]+)v([\d.]+)', svg)]


def test_variant_heatmap_cells_fit_their_number_for_one_experiment_as_for_many():
    """Cells of a fixed size: a lone experiment's row is no thin strip, and "0.271" at the
    template's 11 px (about 6 px a character) fits inside its cell without touching the next."""
    if not (ROOT / "node_modules/.bin/vl2svg").exists():      # only the charts need Node.js
        pytest.skip("Vega-Lite's command line is not installed: `make charts` (needs npm)")
    one, four = heatmap_cells(["workspace"]), heatmap_cells(["a", "b", "c", "d"])
    assert len(one) == len(VARIANTS) and len(four) == 4 * len(VARIANTS)
    assert set(one) == set(four) and len(set(one)) == 1
    width, height = one[0]
    assert width >= len("0.271") * 6 + 16 and height >= 11 + 12, (width, height)
