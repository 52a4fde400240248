"""Segmentation metrics on hand-made masks whose IoU and AP are known."""
from __future__ import annotations

import pytest
import torch

from fashionbg.segment.instances import boxes_from_masks
from fashionbg.segment.metrics import ConfusionMatrix, instance_metric, summarize_instances

NAMES = ["background", "top", "pants", "bag"]


def test_confusion_matrix_known_ious() -> None:
    target = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [2, 2, 2, 2],
                           [2, 2, 2, 255]])          # 255 is ignored
    prediction = torch.tensor([[0, 0, 1, 1],
                               [0, 1, 1, 1],
                               [2, 2, 2, 2],
                               [2, 2, 0, 3]])
    confusion = ConfusionMatrix(4)
    confusion.update(target, prediction)
    result = confusion.compute(NAMES)
    # background: TP 3, GT 4, predicted 4 (incl. (3,2)) -> 3 / 5; top: 4 / 5; pants: 6 / 7
    assert result["per_class_iou"] == {"background": pytest.approx(0.6), "top": pytest.approx(0.8),
                                       "pants": pytest.approx(6 / 7), "bag": None}
    assert result["miou"] == pytest.approx((0.6 + 0.8 + 6 / 7) / 3, abs=1e-6)
    assert result["miou_fg"] == pytest.approx((0.8 + 6 / 7) / 2, abs=1e-6)
    assert result["pixel_acc"] == pytest.approx(13 / 15, abs=1e-6)
    assert result["fw_iou"] == pytest.approx((4 * 0.6 + 4 * 0.8 + 7 * 6 / 7) / 15, abs=1e-6)


def test_a_class_predicted_but_absent_from_truth_has_no_iou() -> None:
    target = torch.tensor([[0, 0, 1, 1]])
    prediction = torch.tensor([[0, 2, 1, 1]])      # "pants" predicted, never true
    confusion = ConfusionMatrix(4)
    confusion.update(target[None], prediction[None])
    result = confusion.compute(NAMES)
    assert result["per_class_iou"] == {"background": pytest.approx(0.5), "top": 1.0,
                                       "pants": None, "bag": None}
    assert result["miou"] == pytest.approx(0.75)


def test_confusion_matrix_accumulates_batches() -> None:
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, :, 2:] = 1
    prediction = target.clone()
    prediction[1] = 0                                 # second image: all background
    split, whole = ConfusionMatrix(2), ConfusionMatrix(2)
    split.update(target[:1], prediction[:1])
    split.update(target[1:], prediction[1:])
    whole.update(target, prediction)
    assert torch.equal(split.matrix, whole.matrix)
    result = whole.compute(["background", "top"])
    assert result["per_class_iou"]["top"] == pytest.approx(8 / 16)
    assert result["per_class_iou"]["background"] == pytest.approx(16 / 24)


def square(shift: int) -> torch.Tensor:
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 5:15, 5 + shift:15 + shift] = True
    return mask


def _ap(prediction: torch.Tensor) -> dict:
    metric = instance_metric()
    truth = square(0)
    metric.update([{"boxes": boxes_from_masks(prediction), "scores": torch.tensor([0.9]),
                    "labels": torch.tensor([1]), "masks": prediction}],
                  [{"boxes": boxes_from_masks(truth), "labels": torch.tensor([1]),
                    "masks": truth}])
    return summarize_instances(metric, ["top"])


def test_instance_ap_perfect_prediction() -> None:
    result = _ap(square(0))
    for key in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75"):
        assert result[key] == pytest.approx(1.0)
    assert result["per_class_mask_ap"] == {"top": pytest.approx(1.0)}


def test_instance_ap_partial_overlap() -> None:
    # Shifted by 2 of 10 columns: IoU = 80 / 120 = 0.667, a match at thresholds 0.50..0.65
    # only, so AP over 0.50:0.95 is 4 / 10.
    result = _ap(square(2))
    for kind in ("mask", "box"):
        assert result[f"{kind}_ap"] == pytest.approx(0.4)
        assert result[f"{kind}_ap50"] == pytest.approx(1.0)
        assert result[f"{kind}_ap75"] == pytest.approx(0.0)


def test_boxes_from_masks_use_pixel_edges() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 3, 4] = True
    masks[1, 1:5, 2:8] = True
    assert boxes_from_masks(masks).tolist() == [[4, 3, 5, 4], [2, 1, 8, 5]]
    assert boxes_from_masks(masks[:0]).shape == (0, 4)


def test_per_image_terms_add_up_to_the_dataset_iou():
    target = torch.tensor([[[0, 1], [1, 2]], [[2, 2], [0, 0]]])
    prediction = torch.tensor([[[0, 1], [2, 2]], [[2, 1], [0, 1]]])
    confusion = ConfusionMatrix(3, keep_images=True)
    confusion.update(target, prediction)
    (hits0, union0, truth0), (hits1, union1, truth1) = confusion.images
    assert hits0.tolist() == [1, 1, 1] and union0.tolist() == [1, 2, 2]
    assert truth0.tolist() == [1, 2, 1]
    assert hits1.tolist() == [1, 0, 1] and union1.tolist() == [2, 2, 2]
    assert truth1.tolist() == [2, 0, 2]
    iou = (hits0 + hits1) / (union0 + union1)
    assert confusion.compute(["a", "b", "c"])["miou"] == pytest.approx(iou.mean(), abs=1e-6)
