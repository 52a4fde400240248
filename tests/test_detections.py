"""Mask AP recomputed from per-image detections equals the reported mask AP (torchmetrics over
pycocotools) on all images, and on a resample with repeats equals the mask AP of the image list
with those images listed again."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from fashionbg.segment.detections import (
    IOU_THRESHOLDS,
    Category,
    MaskAP,
    image_record,
    run_lengths,
)
from fashionbg.segment.metrics import instance_metric, summarize_instances

CLASSES = ["top", "bag", "shoes"]


def blob(rng, size=32):
    mask = torch.zeros(size, size, dtype=torch.bool)
    y, x = rng.integers(0, size - 8, 2)
    h, w = rng.integers(4, 12, 2)
    mask[y:y + h, x:x + w] = True
    return mask


def synthetic_images(n=12, seed=0):
    """Ground truth of 0-3 garments per image; detections that find most of them, shifted,
    with some false alarms, with scores."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        masks = [blob(rng) for _ in range(k)]
        labels = rng.integers(1, 4, k)
        found, found_labels, scores = [], [], []
        for m, label in zip(masks, labels):
            if rng.random() < 0.8:
                found.append(torch.roll(m, int(rng.integers(-2, 3)), dims=1))
                found_labels.append(label if rng.random() < 0.85 else 1 + label % 3)
                scores.append(rng.random())
        for _ in range(int(rng.integers(0, 3))):
            found.append(blob(rng))
            found_labels.append(int(rng.integers(1, 4)))
            scores.append(rng.random() * 0.5)
        stack = (lambda ms: torch.stack(ms) if ms else torch.zeros(0, 32, 32, dtype=torch.bool))
        truth = {"masks": stack(masks), "labels": torch.as_tensor(labels, dtype=torch.int64),
                 "boxes": torch.zeros(k, 4)}
        prediction = {"masks": stack(found), "scores": torch.tensor(scores, dtype=torch.float32),
                      "labels": torch.as_tensor(found_labels, dtype=torch.int64),
                      "boxes": torch.zeros(len(found), 4)}
        images.append((prediction, truth))
    return images


def reported(images):
    metric = instance_metric()
    for prediction, truth in images:
        metric.update([prediction], [truth])
    return summarize_instances(metric, CLASSES)["mask_ap"]


def test_run_lengths_are_cocos_uncompressed_rle():
    mask = np.zeros((5, 4), bool)
    mask[1:3, 1] = mask[4, 3] = True
    rle = mask_utils.frPyObjects({"size": [5, 4], "counts": run_lengths(mask)}, 5, 4)
    assert (mask_utils.decode(rle).astype(bool) == mask).all()
    assert run_lengths(np.ones((2, 2), bool)) == [0, 4]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_ap_on_all_images_is_the_reported_mask_ap(seed):
    images = synthetic_images(seed=seed)
    records = [image_record(p, t, digits=8) for p, t in images]
    ap = MaskAP(records, len(CLASSES)).score(np.ones(len(images)))
    assert ap == pytest.approx(reported(images), abs=1e-6)


def test_mask_ap_of_a_resample_counts_repeated_images_again():
    images = synthetic_images(seed=3)
    records = [image_record(p, t, digits=8) for p, t in images]
    draw = np.random.default_rng(4).integers(0, len(images), len(images))
    weights = np.bincount(draw, minlength=len(images)).astype(float)
    ap = MaskAP(records, len(CLASSES)).score(weights)
    assert ap == pytest.approx(reported([images[i] for i in draw]), abs=1e-6)
    assert ap != pytest.approx(reported(images), abs=1e-6)   # the resample differs


def rectangle(top, left, bottom, right, size=10):
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


# Per image: truth (label, mask) and detections (label, score, mask, index of the truth it
# covers or None). IoUs 16/24, 0.8 exactly (the float32 threshold 0.8 misses it, as in the
# reported mask AP), 0.5 exactly, 1; a false alarm, a detection of the wrong class, a missed
# instance, an image without truth.
HAND_MADE = [
    ([(1, rectangle(0, 0, 4, 5)), (2, rectangle(5, 5, 10, 10))],
     [(1, 0.9, rectangle(0, 1, 4, 6), 0), (2, 0.8, rectangle(5, 5, 10, 9), 1),
      (1, 0.3, rectangle(6, 0, 9, 3), None)]),
    ([(1, rectangle(2, 2, 6, 6)), (1, rectangle(7, 0, 10, 4))],
     [(1, 0.7, rectangle(2, 2, 6, 6), 0), (2, 0.6, rectangle(7, 0, 10, 4), None)]),
    ([(2, rectangle(0, 0, 4, 4))],
     [(2, 0.95, rectangle(0, 0, 4, 8), 0)]),
    ([], [(1, 0.5, rectangle(3, 3, 5, 5), None)]),
]


def test_mask_ap_from_matches_made_elsewhere_is_pycocotools_mask_ap():
    """MaskAP.from_categories (the matches decided by a simulation) gives the same scores as
    the pycocotools path on the same masks, on all images and on resamples with repeats and
    left-out images."""
    records = [{"size": [10, 10],
                "truth": [{"label": label, "counts": run_lengths(m)} for label, m in truth],
                "detections": [{"label": label, "score": score, "counts": run_lengths(m)}
                               for label, score, m, _ in found]}
               for truth, found in HAND_MADE]
    categories = []
    for label in (1, 2):
        rows = [(i, score, truth[j][1] if j is not None and truth[j][0] == label else None, m)
                for i, (truth, found) in enumerate(HAND_MADE)
                for k, score, m, j in found if k == label]
        iou = np.array([0.0 if t is None else (t & m).sum() / (t | m).sum()
                        for _, _, t, m in rows])
        matched = iou[None] >= IOU_THRESHOLDS[:, None]
        truth = np.array([sum(k == label for k, _ in t) for t, _ in HAND_MADE], float)
        categories.append(Category.ranked(np.array([r[1] for r in rows]),
                                          np.array([r[0] for r in rows]), matched, ~matched,
                                          truth))
    weights = np.array([[1, 1, 1, 1], [2, 0, 1, 1], [0, 3, 0, 1], [1, 0, 0, 3], [0, 0, 0, 4]],
                       float)
    expected = MaskAP(records, 2).scores(weights)
    assert np.isnan(expected[-1]) and len(set(expected[:-1])) == 4   # the rows differ
    np.testing.assert_array_equal(MaskAP.from_categories(4, categories).scores(weights), expected)
