"""The controlled background variants on hand-made arrays with known results: the oracle mask,
removing the person (tiles, black, inpainting), compositing onto other backgrounds, the pairing
rules, the BG-gap, and the silhouette check: whether the shape of the removed person can be read
back from only_bg."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage, stats

from fashionbg.background.composite import composite
from fashionbg.background.params import PERSON_FILLS
from fashionbg.background.variants import (
    NEEDS_PERSON,
    PARTNERS,
    PER_IMAGE,
    PERSON_REMOVERS,
    black_out_person,
    bounding_box,
    next_class_partners,
    other_class_partners,
    partner_rows,
    per_image_variant,
    person_holes,
    remove_person,
    same_class_partners,
    truth_alpha,
)
from fashionbg.contracts.codes import IGNORE
from fashionbg.contracts.params import MIXED, VARIANTS, read_variant, read_variants
from fashionbg.contracts.prepared import load_variants
from fashionbg.core.errors import ParamError, UserError
from fashionbg.report.headline import matrix_row, reliance

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
DEFAULT_PERSON_FILL = yaml.safe_load(PARAMS.read_text())["background"]["person_fill"]

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


@pytest.mark.parametrize("how, tolerance", [("tile", 0), ("telea", 2)])
def test_remove_person_fills_the_hole_with_the_surrounding_background(how, tolerance):
    image, alpha = scene(RED)
    out = remove_person(image[None], alpha[None], how)[0]
    assert np.abs(out.astype(int) - np.array(RED)).max() <= tolerance   # no trace of the person
    assert out.shape == image.shape and out.dtype == np.uint8


def coordinate_image(height: int, width: int) -> np.ndarray:
    """Every pixel a different colour that says where it is: (row, column, 7)."""
    rows, cols = np.mgrid[:height, :width]
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


PEOPLE = {   # person regions touching each side, in the middle, and one thin and tall
    "middle": (slice(10, 22), slice(8, 16)), "top": (slice(0, 9), slice(5, 20)),
    "bottom": (slice(25, 40), slice(0, 12)), "left": (slice(3, 37), slice(0, 6)),
    "right": (slice(12, 30), slice(20, 30)), "tall": (slice(0, 40), slice(13, 15)),
}


@pytest.mark.parametrize("where", PEOPLE)
def test_tiling_takes_no_pixel_of_the_person_region_from_the_person(where):
    """Each pixel of a coordinate image names its source, so the tiled box is checked exactly:
    every pixel in it comes from outside the box (so from outside the widened person), and
    nothing outside the box changes."""
    image = coordinate_image(40, 30)
    alpha = np.zeros((40, 30), np.uint8)
    alpha[PEOPLE[where]] = 255
    alpha[PEOPLE[where][0].start, PEOPLE[where][1].start] = 90     # a soft edge is the person too
    out = remove_person(image[None], alpha[None], "tile")[0]
    hole = person_holes(alpha[None])[0]
    rows, cols = bounding_box(hole)
    in_box = np.zeros(hole.shape, bool)
    in_box[rows, cols] = True
    assert hole[alpha > 0].all() and not hole[~in_box].any()
    assert np.array_equal(out[~in_box], image[~in_box])
    source_rows, source_cols = out[in_box][:, 0], out[in_box][:, 1]
    assert not in_box[source_rows, source_cols].any()
    assert np.all(out[in_box][:, 2] == 7)


def test_a_person_over_the_whole_image_leaves_nothing_to_tile_with_and_goes_black():
    image = coordinate_image(8, 6)
    out = remove_person(image[None], np.full((1, 8, 6), 255, np.uint8), "tile")[0]
    assert not out.any()


def test_black_fill_blacks_out_the_box_and_no_fg_the_widened_person_only():
    image, alpha = scene(RED)
    hole = person_holes(alpha[None])[0]
    rows, cols = bounding_box(hole)
    black = remove_person(image[None], alpha[None], "black")[0]
    assert not black[rows, cols].any() and tuple(black[0, 0]) == RED
    no_fg = black_out_person(image[None], alpha[None])[0]
    assert not no_fg[hole].any() and np.all(no_fg[~hole] == RED)
    assert hole.sum() > (alpha > 0).sum()          # widened past the person's edge


def test_an_image_without_a_person_is_kept():
    image, _ = scene(RED)
    for how in PERSON_FILLS:
        assert np.array_equal(remove_person(image[None], np.zeros((1, 24, 24), np.uint8),
                                            how)[0], image)


def test_every_variant_and_person_fill_has_a_builder_and_unknown_names_are_refused():
    assert set(PER_IMAGE) | set(PARTNERS) == set(VARIANTS) and set(PARTNERS) == set(MIXED)
    assert set(NEEDS_PERSON) <= set(PER_IMAGE) and tuple(PERSON_REMOVERS) == PERSON_FILLS
    with pytest.raises(UserError, match="no per-image background variant 'mixed_next'"):
        per_image_variant("mixed_next")
    with pytest.raises(UserError, match="no mixed background variant 'only_fg'"):
        partner_rows("only_fg", LABELS, SPLITS, 0)


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


@pytest.mark.parametrize("variant, partners", [("mixed_rand", other_class_partners),
                                               ("mixed_next", next_class_partners)])
def test_mixing_classes_needs_two_classes_in_every_split(variant, partners):
    with pytest.raises(UserError, match=f"{variant} needs images of at least two classes"):
        partners(np.array([0, 1, 0]), np.array([0, 0, 1]), seed=0)


def test_next_class_partners_take_the_next_class_of_the_same_split_in_a_fixed_order():
    """Classes 0..3; split 0 has 0, 1 and 3 (so 1 takes 3, and 3 wraps round to 0), split 2
    has 1 and 2."""
    labels = np.array([0, 0, 1, 1, 3, 3, 1, 2, 2, 1])
    splits = np.array([0, 0, 0, 0, 0, 0, 2, 2, 2, 2])
    partners = next_class_partners(labels, splits, seed=5)
    assert np.array_equal(splits[partners], splits)
    assert labels[partners].tolist() == [1, 1, 3, 3, 0, 0, 2, 1, 1, 2]
    assert np.array_equal(partners, partner_rows("mixed_next", labels, splits, 5))
    many = np.repeat([0, 1, 2], 30)
    drawn = {tuple(next_class_partners(many, np.zeros(90, int), seed)) for seed in (0, 1)}
    assert len(drawn) == 2                     # a random row of the next class, by the seed


def test_bg_gap_of_a_model_that_looks_only_at_the_background():
    """Class 0 is photographed on red, class 1 on blue. A "model" that reads the colour of the
    top-left corner scores 1 on mixed_same, 0 on mixed_rand (gap 1) and 1 on only_bg."""
    def model(images: np.ndarray) -> np.ndarray:
        corner = images[:, :3, :3].reshape(len(images), -1, 3).mean(axis=1)
        return (corner[:, 2] > corner[:, 0]).astype(int)

    labels = np.array([0, 0, 0, 1, 1, 1])
    splits = np.zeros(6, int)
    images, alphas = map(np.stack, zip(*(scene(RED if y == 0 else BLUE) for y in labels)))
    only_bg = remove_person(images, alphas, DEFAULT_PERSON_FILL)
    variants = {
        "original": images,
        "only_bg": only_bg,
        "mixed_same": composite(images, alphas, only_bg[same_class_partners(labels, splits, 0)]),
        "mixed_rand": composite(images, alphas, only_bg[other_class_partners(labels, splits, 0)]),
    }
    top1 = {name: float(np.mean(model(x) == labels)) for name, x in variants.items()}
    assert top1 == {"original": 1.0, "only_bg": 1.0, "mixed_same": 1.0, "mixed_rand": 0.0}
    assert reliance(top1) == {"gap": 1.0, "only_bg": 1.0, "no_fg": None}
    assert reliance({"original": 0.5, "no_fg": 0.25}) == {"gap": None, "only_bg": None,
                                                          "no_fg": 0.25}
    assert matrix_row("mixed_rand", {"original": 0.5})[0] == {
        "trained_on": "mixed_rand", "tested_on": "original", "score": 0.5}


ALL = ["original", "rembg", "oracle", "only_bg", "no_fg", "mixed_same", "mixed_rand",
       "mixed_next"]


def data(variants, variant: str = "original") -> dict:
    """The project's params with data.variants and data.variant replaced."""
    params = yaml.safe_load(PARAMS.read_text())
    params["data"].update(variants=variants, variant=variant)
    return params


@pytest.mark.parametrize("variants", [
    ["original"], ["original", "rembg", "nope"], ["original", "rembg", "rembg"], "original",
    ["original", "rembg", "mixed_rand"], ["original", "rembg", "mixed_next"],
    ["original", "rembg", "only_fg"],
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


def silhouettes(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photos of two classes that differ only in the person's shape: a disk (class 0) or a
    diamond (class 1) with the same bounding box, at a random place, size and colour, on a
    textured background (a random gradient under pixel noise, as cloth, brick or foliage
    are); images, alphas and labels."""
    rng = np.random.default_rng(seed)
    size, labels = 48, np.repeat([0, 1], n_per_class)
    rows, cols = np.mgrid[:size, :size]
    images, alphas = [], []
    for label in labels:
        radius = rng.integers(8, 13)
        cy, cx = rng.integers(radius + 2, size - radius - 2, size=2)
        if label == 0:
            person = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
        else:
            person = np.abs(rows - cy) + np.abs(cols - cx) <= radius
        gradient = rng.uniform(40, 200, 3) + rng.uniform(-1, 1, 3) * rows[..., None]
        image = gradient + rng.normal(0, 25, (size, size, 3))
        image[person] = rng.uniform(0, 255, 3)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        alphas.append(person.astype(np.uint8) * 255)
    return np.stack(images), np.stack(alphas), labels


def shape_extent(image: np.ndarray) -> float:
    """A fixed detector of the removed region and the one shape feature read from it: the
    pixels whose 3x3 neighbourhood is nearly flat (a fill, where the photo has texture), and
    the share of their bounding box they cover (π/4 for a disk, 1/2 for a diamond; 0 when no
    region is found)."""
    grey = image.astype(np.float64).mean(axis=-1)
    local_sd = np.sqrt(np.maximum(ndimage.uniform_filter(grey ** 2, 3)
                                  - ndimage.uniform_filter(grey, 3) ** 2, 0))
    region = ndimage.binary_opening(local_sd < 4.0)
    box = bounding_box(region)
    return 0.0 if box is None else float(region[box].mean())


def silhouette_accuracy(how: str) -> tuple[int, int]:
    """A model that sees only the shape of the removed region: the extent of the detected
    region, with the threshold between the class means learned on 40 training images; right
    answers and test images (80)."""
    train, test = silhouettes(20, seed=0), silhouettes(40, seed=1)
    features = {}
    for name, (images, alphas, labels) in (("train", train), ("test", test)):
        filled = remove_person(images, alphas, how)
        features[name] = (np.array([shape_extent(x) for x in filled]), labels)
    x, y = features["train"]
    means = [x[y == c].mean() for c in (0, 1)]
    threshold, disk_above = np.mean(means), means[0] > means[1]
    x, y = features["test"]
    predicted = np.where((x > threshold) == disk_above, 0, 1)
    return int(np.sum(predicted == y)), len(y)


@pytest.mark.parametrize("how", PERSON_FILLS)
def test_the_silhouette_of_the_person_is_readable_from_telea_only(how):
    """The Telea smear keeps the person's shape, and a shape-only model tells disks from
    diamonds on it; the default (tiles of the image's own background over the person's box)
    and a black box leave only the box, the same for both classes: chance (1/2)."""
    right, n = silhouette_accuracy(how)
    above_chance = stats.binomtest(right, n, 0.5, alternative="greater").pvalue
    if how == "telea":
        assert right / n >= 0.85 and above_chance < 1e-6, (right, n)
    else:
        assert above_chance > 0.05, (how, right, n)
    assert DEFAULT_PERSON_FILL == "tile"


def test_prepare_builds_every_variant_on_the_rows_splits_and_truth_of_the_photos(tiny_baseline):
    """The real stages on the tiny demo (real rembg; the tests' shared baseline): every variant
    of params.yaml holds the original's rows, splits, labels and masks; mixed_next takes the
    next class of the same split; no_fg is black over the true person; only_bg is no photo's
    own copy."""
    built = load_variants(tiny_baseline / "data" / "prepared")   # checks rows and truth alike
    assert tuple(built) == VARIANTS
    original = built["original"]
    for name, cache in built.items():
        assert cache.meta["paths"] == original.meta["paths"]
        assert np.array_equal(cache.splits, original.splits)
        assert np.array_equal(cache.labels, original.labels)
        assert np.array_equal(cache.masks, original.masks)
        assert cache.meta["person_fill"] == DEFAULT_PERSON_FILL
    partners = np.array(built["mixed_next"].meta["background_rows"])
    classes = len(original.meta["labels"])
    assert np.array_equal(original.splits[partners], original.splits)
    assert np.array_equal(original.labels[partners], (original.labels + 1) % classes)
    person = person_holes(truth_alpha(original.masks[:], original.masks[:])[0])
    assert not built["no_fg"].images[person].any()
    assert np.array_equal(built["no_fg"].images[~person], original.images[~person])
    assert not np.array_equal(built["only_bg"].images, original.images)
