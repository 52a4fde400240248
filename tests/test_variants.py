"""The controlled background variants on hand-made arrays with known results: the oracle mask,
inpainting, compositing onto other backgrounds, the pairing rules and the BG-gap."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from fashionbg.background.composite import composite
from fashionbg.background.variants import (
    other_class_partners,
    remove_person,
    same_class_partners,
    truth_alpha,
)
from fashionbg.contracts.codes import IGNORE
from fashionbg.contracts.params import read_variant, read_variants
from fashionbg.core.errors import ParamError, UserError
from fashionbg.report.headline import matrix_row, reliance

RED, BLUE, GREY = (200, 30, 30), (30, 30, 200), (128, 128, 128)


def scene(background: tuple[int, int, int], person: tuple[int, int, int] = GREY,
          size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A flat background with a person-sized rectangle in the middle, and its 0/255 alpha."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    alpha = np.zeros((size, size), np.uint8)
    alpha[6:18, 9:15] = 255
    image[alpha > 0] = person
    return image, alpha


def test_truth_alpha_marks_every_class_but_background_and_falls_back_without_truth():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, 1:3, 1:3] = 5           # a garment
    masks[0, 0, 0] = IGNORE          # a pixel without truth is not the person
    masks[1] = IGNORE                # no ground truth at all for this row
    fallback = np.full((2, 4, 4), 77, np.uint8)
    alpha, missing = truth_alpha(masks, fallback)
    assert missing == 1
    expected = np.zeros((4, 4), np.uint8)
    expected[1:3, 1:3] = 255
    assert np.array_equal(alpha[0], expected)
    assert np.array_equal(alpha[1], fallback[1])


def test_remove_person_fills_the_hole_with_the_surrounding_background():
    image, alpha = scene(RED)
    out = remove_person(image[None], alpha[None])[0]
    assert np.abs(out.astype(int) - np.array(RED)).max() <= 2   # no trace of the grey person
    assert out.shape == image.shape and out.dtype == np.uint8


def test_composite_onto_per_image_backgrounds():
    image, alpha = scene(RED)
    alpha[0, 0] = 128
    backdrop, _ = scene(BLUE, person=BLUE)
    out = composite(image[None], alpha[None], backdrop[None])[0]
    assert tuple(out[10, 12]) == GREY             # the person stays
    assert tuple(out[1, 1]) == BLUE               # the background is the other image's
    assert tuple(out[0, 0]) == tuple(np.rint(np.array(RED) * 128 / 255
                                             + np.array(BLUE) * 127 / 255).astype(int))


LABELS = np.array([0, 0, 0, 1, 1, 2, 0, 1, 2, 2, 0])
SPLITS = np.array([0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 1])


def test_same_class_partners_stay_within_split_and_class_and_use_each_background_once():
    partners = same_class_partners(LABELS, SPLITS, seed=3)
    assert np.array_equal(LABELS[partners], LABELS) and np.array_equal(SPLITS[partners], SPLITS)
    alone = [10, 5, 6, 7]            # the only row of its class in its split keeps its own
    assert all(partners[r] == r for r in alone)
    others = np.setdiff1d(np.arange(len(LABELS)), alone)
    assert np.all(partners[others] != others)
    assert sorted(partners) == list(range(len(LABELS)))    # a permutation
    assert np.array_equal(partners, same_class_partners(LABELS, SPLITS, seed=3))
    assert not np.array_equal(partners, same_class_partners(LABELS, SPLITS, seed=4))


def test_other_class_partners_stay_within_split_with_another_class():
    labels, splits = LABELS[:-1], SPLITS[:-1]     # two classes or more in every split
    partners = other_class_partners(labels, splits, seed=3)
    assert np.all(labels[partners] != labels) and np.array_equal(splits[partners], splits)
    assert np.array_equal(partners, other_class_partners(labels, splits, seed=3))


def test_other_class_partners_need_two_classes_in_every_split():
    with pytest.raises(UserError, match="mixed_rand needs images of at least two classes"):
        other_class_partners(np.array([0, 1, 0]), np.array([0, 0, 1]), seed=0)


def test_bg_gap_of_a_model_that_looks_only_at_the_background():
    """Class 0 is photographed on red, class 1 on blue. A "model" that reads the colour of the
    top-left corner scores 1 on mixed_same, 0 on mixed_rand (gap 1) and 1 on only_bg."""
    def model(images: np.ndarray) -> np.ndarray:
        corner = images[:, :3, :3].reshape(len(images), -1, 3).mean(axis=1)
        return (corner[:, 2] > corner[:, 0]).astype(int)

    labels = np.array([0, 0, 0, 1, 1, 1])
    splits = np.zeros(6, int)
    images, alphas = map(np.stack, zip(*(scene(RED if y == 0 else BLUE) for y in labels)))
    only_bg = remove_person(images, alphas)
    variants = {
        "original": images,
        "only_bg": only_bg,
        "mixed_same": composite(images, alphas, only_bg[same_class_partners(labels, splits, 0)]),
        "mixed_rand": composite(images, alphas, only_bg[other_class_partners(labels, splits, 0)]),
    }
    top1 = {name: float(np.mean(model(x) == labels)) for name, x in variants.items()}
    assert top1 == {"original": 1.0, "only_bg": 1.0, "mixed_same": 1.0, "mixed_rand": 0.0}
    assert reliance(top1) == {"gap": 1.0, "only_bg": 1.0}
    assert reliance({"original": 0.5}) == {"gap": None, "only_bg": None}
    assert matrix_row("mixed_rand", {"original": 0.5})[0] == {
        "trained_on": "mixed_rand", "tested_on": "original", "score": 0.5}


ALL = ["original", "rembg", "oracle", "only_bg", "mixed_same", "mixed_rand"]
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def data(variants, variant: str = "original") -> dict:
    """The project's params with data.variants and data.variant replaced."""
    params = yaml.safe_load(PARAMS.read_text())
    params["data"].update(variants=variants, variant=variant)
    return params


@pytest.mark.parametrize("variants", [
    ["original"], ["original", "rembg", "nope"], ["original", "rembg", "rembg"], "original",
    ["original", "rembg", "mixed_rand"],
])
def test_bad_variant_lists_are_refused(variants):
    with pytest.raises(ParamError, match="data.variants"):
        read_variants(data(variants))


def test_the_trained_variant_must_be_built():
    params = data(["rembg", "original"], "only_bg")
    assert read_variants(params) == ("original", "rembg")
    with pytest.raises(ParamError, match="data.variant"):
        read_variant(params)
    assert read_variant(data(ALL, "mixed_rand")) == "mixed_rand"
