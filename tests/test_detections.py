"""Mask AP recomputed from per-image detections equals the reported mask AP (torchmetrics over
pycocotools) on all images, and on a resample with repeats equals the mask AP of the image list
with those images listed again."""
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from fashionbg.segment.detections import MaskAP, image_record, run_lengths
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
