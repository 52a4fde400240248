"""The headline metrics files hold only what the study compares, with one rounding; detail and
per-class scores live elsewhere; dvc.yaml declares the headline files as its only metrics."""
import json
from pathlib import Path

import pytest
import yaml

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
def test_task_headline_files_hold_test_cross_and_background_reliance_only(path):
    data = json.loads((ROOT / path).read_text())
    assert set(data) == {"test", "cross", "bg"}
    assert set(data["test"]) == set(data["cross"]) in HEADLINE_KEYS[path]
    assert set(data["bg"]) == {"gap", "only_bg", "no_fg"}
    assert numbers(data["test"]) and numbers(data["cross"]) and numbers(data["bg"])


def test_background_headline_is_small():
    data = json.loads((ROOT / paths.BACKGROUND_METRICS).read_text())
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
