"""The offline demo dataset: determinism, ground truth, context, splits, raw contract, params."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fashionbg.contracts.codes import SPLITS
from fashionbg.contracts.raw import RawWriter, read_classes, read_index
from fashionbg.core.errors import ParamError
from fashionbg.sources.demo import source as demo
from fashionbg.sources.demo.styles import BACKGROUNDS, MASK_CLASSES, STYLES

SMALL = demo.DemoConfig(seed=0, images_per_class=5, image_size=(96, 72),
                        context_correlation=0.3, split=(0.6, 0.2, 0.2), max_images=None)


def draw(config: demo.DemoConfig, style: int, index: int,
         family: int | None = None) -> tuple[Image.Image, np.ndarray]:
    return demo.render(config, style, demo.image_rng(config.seed, style, index), family)


def built(config: demo.DemoConfig, root: Path) -> tuple[RawWriter, dict]:
    writer = RawWriter(root)
    result = demo.build(config, writer)
    return writer, writer.finish(result.labels, result.mask_classes, result.extra)


# ---- determinism ----------------------------------------------------------------------------

def test_same_config_gives_identical_images_and_masks() -> None:
    for style in (0, 5):
        (a, ma), (b, mb) = draw(SMALL, style, 3), draw(SMALL, style, 3)
        assert a.tobytes() == b.tobytes()
        assert np.array_equal(ma, mb)


def test_seed_style_and_index_each_change_the_image() -> None:
    base = draw(SMALL, 2, 1)[0].tobytes()
    assert draw(replace(SMALL, seed=1), 2, 1)[0].tobytes() != base
    assert draw(SMALL, 3, 1)[0].tobytes() != base
    assert draw(SMALL, 2, 2)[0].tobytes() != base


def test_an_image_does_not_depend_on_how_many_are_built(tmp_path: Path) -> None:
    built(replace(SMALL, images_per_class=3), tmp_path / "few")
    built(SMALL, tmp_path / "more")
    for rel in ("images/rock/rock_0002.jpg", "masks/casual/casual_0000.png"):
        assert (tmp_path / "few" / rel).read_bytes() == (tmp_path / "more" / rel).read_bytes()


# ---- ground truth ---------------------------------------------------------------------------

def test_every_image_shows_a_person_with_valid_class_ids() -> None:
    seen: set[int] = set()
    for style in range(len(STYLES)):
        for i in range(4):
            image, mask = draw(SMALL, style, i)
            assert image.mode == "RGB" and image.size == (72, 96)
            assert mask.dtype == np.uint8 and mask.shape == (96, 72)
            assert mask.max() < len(MASK_CLASSES)
            ids = set(np.unique(mask).tolist())
            assert {0, MASK_CLASSES.index("skin"), MASK_CLASSES.index("hair")} <= ids
            assert 0.05 < (mask > 0).mean() < 0.5, "the person is a sizeable part of the photo"
            seen |= ids
    assert seen == set(range(len(MASK_CLASSES))), "every garment class occurs somewhere"


def edge_strength(image: Image.Image, mask: np.ndarray) -> float:
    """Mean colour change across the boundary of mask > 0."""
    rgb = np.asarray(image, np.float32)
    fg = mask > 0
    across = (fg[:, 1:] != fg[:, :-1])
    return float(np.abs(rgb[:, 1:] - rgb[:, :-1]).sum(axis=2)[across].mean())


def test_mask_outlines_the_drawn_person() -> None:
    """Colour changes sharply along the true outline, much less along a shifted one."""
    config = replace(SMALL, image_size=(128, 96))
    true, shifted = [], []
    for style in range(len(STYLES)):
        image, mask = draw(config, style, 0)
        true.append(edge_strength(image, mask))
        shifted.append(edge_strength(image, np.roll(mask, 4, axis=1)))
    assert np.mean(true) > 1.5 * np.mean(shifted)


def test_figure_is_the_same_on_any_background() -> None:
    """The background family changes only the scene; the mask is drawn before it."""
    masks = [draw(SMALL, 4, 0, family)[1] for family in range(len(BACKGROUNDS))]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


# ---- context --------------------------------------------------------------------------------

def test_full_correlation_ties_background_family_to_style() -> None:
    config = replace(SMALL, context_correlation=1.0)
    for style in range(len(STYLES)):
        for i in range(10):
            family = demo.background_family(config, style, demo.image_rng(0, style, i))
            assert family == style % len(BACKGROUNDS)


def test_zero_correlation_spreads_families_evenly() -> None:
    config = replace(SMALL, context_correlation=0.0)
    families = [demo.background_family(config, 0, demo.image_rng(0, 0, i)) for i in range(600)]
    counts = np.bincount(families, minlength=len(BACKGROUNDS))
    assert counts.min() > 600 / len(BACKGROUNDS) * 0.7


def test_build_reports_how_often_the_background_follows_the_style(tmp_path: Path) -> None:
    _, tied = built(replace(SMALL, context_correlation=1.0), tmp_path / "tied")
    _, free = built(replace(SMALL, context_correlation=0.0), tmp_path / "free")
    assert tied["own_family_share"] == 1.0
    assert free["own_family_share"] < 0.5


def background_roughness(family: int) -> float:
    """Mean colour change between neighbouring background pixels, sensor noise blurred away."""
    config = replace(SMALL, image_size=(128, 96))
    total = 0.0
    for i in range(6):
        image, mask = draw(config, 0, i, family)
        rgb = np.asarray(image.filter(ImageFilter.GaussianBlur(1)), np.float32)
        step = np.abs(rgb[:, 1:] - rgb[:, :-1]).sum(axis=2)
        total += step[(mask[:, 1:] == 0) & (mask[:, :-1] == 0)].mean()
    return total / 6


def test_background_families_look_different() -> None:
    """A plain studio backdrop is the smoothest; a street full of windows is far busier."""
    rough = {name: background_roughness(f) for f, name in enumerate(BACKGROUNDS)}
    assert min(v for k, v in rough.items() if k != "studio") > 1.3 * rough["studio"], rough
    assert rough["street"] > 2 * rough["studio"], rough


# ---- splits ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "fractions", "expected"), [
    (40, (0.6, 0.2, 0.2), [24, 8, 8]),
    (10, (0.7, 0.15, 0.15), [7, 2, 1]),
    (3, (0.8, 0.1, 0.1), [1, 1, 1]),
    (4, (0.5, 0.0, 0.5), [2, 0, 2]),
])
def test_split_counts(n: int, fractions: tuple[float, float, float], expected: list[int]) -> None:
    assert demo.split_counts(n, fractions) == expected


def test_build_writes_a_consistent_raw_dir(tmp_path: Path) -> None:
    _, summary = built(SMALL, tmp_path)
    rows = read_index(tmp_path)
    assert len(rows) == summary["images"] == len(STYLES) * SMALL.images_per_class
    assert read_classes(tmp_path) == {"labels": list(STYLES),
                                      "mask_classes": list(MASK_CLASSES)}
    summary_file = json.loads((tmp_path / "summary.json").read_text())
    assert summary_file["source"] == "demo" and summary_file["refused"] == 0
    expected = dict(zip(SPLITS, demo.split_counts(SMALL.images_per_class, SMALL.split)))
    for style in STYLES:
        mine = [r for r in rows if r.label == style]
        assert {s: sum(r.split == s for r in mine) for s in SPLITS} == expected
    for row in rows:
        assert row.path.split("/")[1] == row.label
        with Image.open(tmp_path / row.path) as image:
            assert image.size == (72, 96) and image.mode == "RGB"
        mask = np.asarray(Image.open(tmp_path / row.mask))
        assert mask.shape == (96, 72) and 0 < (mask > 0).mean() and mask.max() < 10
    on_disk = {str(p.relative_to(tmp_path)) for p in (tmp_path / "images").rglob("*.jpg")}
    assert on_disk == {r.path for r in rows}


def test_max_images_is_a_stratified_nested_subsample(tmp_path: Path) -> None:
    every = {r.path: r for r in read_index(built(SMALL, tmp_path / "all")[0].root)}
    small = read_index(built(replace(SMALL, max_images=16), tmp_path / "16")[0].root)
    smaller = read_index(built(replace(SMALL, max_images=8), tmp_path / "8")[0].root)
    assert len(small) == 16 and len(smaller) == 8
    assert sorted(sum(r.label == s for r in small) for s in STYLES) == [2] * len(STYLES)
    assert {r.path for r in smaller} <= {r.path for r in small} <= set(every)
    assert all(every[r.path] == r for r in small)   # same split and mask name as in the full set
    for row in small:
        assert (tmp_path / "16" / row.path).read_bytes() == \
            (tmp_path / "all" / row.path).read_bytes()


# ---- params ---------------------------------------------------------------------------------

def data_params(**demo_changes: object) -> dict:
    return {"seed": 3, "split": [0.6, 0.2, 0.2], "max_images": None,
            "demo": {"images_per_class": 40, "image_size": [256, 192],
                     "context_correlation": 0.3, **demo_changes}}


def test_validate_reads_the_params() -> None:
    assert demo.validate(data_params()) == demo.DemoConfig(
        seed=3, images_per_class=40, image_size=(256, 192), context_correlation=0.3,
        split=(0.6, 0.2, 0.2), max_images=None)


@pytest.mark.parametrize(("key", "value"), [
    ("context_correlation", 1.5),
    ("context_correlation", "high"),
    ("images_per_class", 2),
    ("images_per_class", 10.5),
    ("image_size", [16, 16]),
    ("image_size", [256]),
])
def test_validate_names_the_bad_key_and_value(key: str, value: object) -> None:
    with pytest.raises(ParamError) as err:
        demo.validate(data_params(**{key: value}))
    assert err.value.key == f"data.demo.{key}"
    assert f"data.demo.{key} = {value!r}" in str(err.value)
    assert "expected" in str(err.value)


@pytest.mark.parametrize("value", [[0.5, 0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0],
                                   [1.2, -0.1, -0.1], [0.8, 0.2]])
def test_validate_checks_the_shared_split(value: object) -> None:
    with pytest.raises(ParamError, match=r"data\.split = .*(train > 0|test share > 0)"):
        demo.validate({**data_params(), "split": value})


def test_validate_rejects_a_bad_seed_and_a_missing_section() -> None:
    with pytest.raises(ParamError, match=r"data\.seed = -1"):
        demo.validate({**data_params(), "seed": -1})
    with pytest.raises(ParamError, match=r"data\.demo = None"):
        demo.validate({"seed": 0})


def test_validate_rejects_unknown_and_missing_demo_keys() -> None:
    with pytest.raises(ParamError) as err:
        demo.validate(data_params(images_per_clas=40))
    assert err.value.key == "data.demo.images_per_clas"
    params = data_params()
    del params["demo"]["context_correlation"]
    with pytest.raises(ParamError) as err:
        demo.validate(params)
    assert err.value.key == "data.demo.context_correlation"


# ---- realism: the real salient-object model finds the person ----------------------------------

def test_rembg_finds_the_person(u2netp_session) -> None:
    import rembg

    session = u2netp_session
    config = replace(SMALL, image_size=(256, 192))
    ious = []
    for style in range(6):
        image, mask = draw(config, style, 0)
        predicted = np.asarray(rembg.remove(image, session=session, only_mask=True)) >= 128
        person = mask > 0
        ious.append((predicted & person).sum() / (predicted | person).sum())
    assert np.mean(ious) >= 0.75, f"rembg IoU per image: {np.round(ious, 2)}"
