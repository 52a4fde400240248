"""`train.augment_on: device`: each sample of a batch gets its own random augmentation on the
device, in one batched operation per transform, from the distributions the loader's
transforms draw from; a seed repeats it, masks move with their images, and both training
stages train with it end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import ks_2samp
from test_cuda_paths import count_reads
from test_distributed import run, write_project
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fashionbg.classify.data import augmentation
from fashionbg.nn.augment import BatchAugment, crop_boxes, crop_resize, resized_crop
from fashionbg.nn.checkpoint import load_checkpoint
from fashionbg.nn.device import seed_everything
from fashionbg.segment.data import paired_transform

SIZE = (32, 24)
CPU = torch.device("cpu")


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """n copies of one image, so any difference between outputs comes from augmentation."""
    image = torch.randint(0, 256, (3, *SIZE), dtype=torch.uint8, generator=torch.Generator()
                          .manual_seed(1))
    return image.expand(n, -1, -1, -1).contiguous(), torch.arange(n)


def test_each_sample_gets_its_own_crop_unlike_a_batched_v2_call():
    images, labels = batch()
    transform = augmentation("standard", SIZE)
    seed_everything(0)
    once = transform(images)                        # v2 on a batch: one crop for all
    assert all(torch.equal(once[0], other) for other in once[1:])
    out, kept = BatchAugment(transform, masks=False)(images, labels)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(kept, labels)                # labels pass through untouched
    assert len({tuple(o.flatten().tolist()) for o in out}) == len(out)


@pytest.mark.parametrize("name", ["standard", "strong"])
def test_device_augmentation_repeats_with_the_seed(name):
    images, labels = batch()
    augment = BatchAugment(augmentation(name, SIZE), masks=False)

    def draw() -> torch.Tensor:
        seed_everything(5)
        return augment(images, labels)[0]

    first = draw()
    assert torch.equal(first, draw())
    assert len({tuple(o.flatten().tolist()) for o in first}) == len(first)


def test_segmentation_pairs_move_image_and_mask_together():
    images = torch.zeros(8, 3, *SIZE, dtype=torch.uint8)
    images[:, :, 8:20, 3:11] = 250                  # one off-centre garment
    masks = (images[:, 0] > 127).long()
    seed_everything(0)
    out, out_masks = BatchAugment(paired_transform("standard", SIZE), masks=True)(images, masks)
    assert out_masks.dtype == torch.long and set(out_masks.unique().tolist()) <= {0, 1}
    assert not all(torch.equal(out_masks[0], m) for m in out_masks[1:])
    # the crop and flip move the mask with the image (nearest vs bilinear: edges may differ;
    # the colour jitter keeps the garment far brighter than the black background)
    agree = ((out[:, 0] > 60).long() == out_masks).float().mean()
    assert agree > 0.97, agree


def test_crops_are_drawn_from_torchvisions_distribution():
    """The batched crop boxes against RandomResizedCrop.get_params, 4000 draws each: the same
    distribution of area, aspect ratio and position (two-sample Kolmogorov-Smirnov), also for
    an image whose own ratio falls outside the allowed range (torchvision's fallback)."""
    torch.manual_seed(0)
    for height, width, ratio in ((32, 24, (0.6, 0.9)), (40, 10, (0.85, 1.2))):
        crop = v2.RandomResizedCrop((height, width), scale=(0.08, 1.0), ratio=ratio)
        image = torch.zeros(3, height, width)
        draws = [crop.make_params([image]) for _ in range(4000)]
        theirs = np.array([[d[k] for k in ("top", "left", "height", "width")] for d in draws])
        ours = crop_boxes(4000, height, width, crop.scale, crop.ratio, CPU).double().numpy()
        for name, a, b in (("area", theirs[:, 2] * theirs[:, 3], ours[:, 2] * ours[:, 3]),
                           ("aspect", theirs[:, 3] / theirs[:, 2], ours[:, 3] / ours[:, 2]),
                           ("top", theirs[:, 0], ours[:, 0]), ("left", theirs[:, 1], ours[:, 1])):
            assert ks_2samp(a, b).pvalue > 0.001, (height, width, name)


def test_a_crop_resamples_the_pixels_torchvision_would():
    """Each sample's box, cut and resized in the batch, against v2's resized_crop of the same
    box: the same pixels (float32 rounding apart) and the same mask ids."""
    generator = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 64, 48), generator=generator).float()
    mask = torch.randint(0, 5, (64, 48), generator=generator)
    torch.manual_seed(3)
    boxes = crop_boxes(6, 64, 48, (0.3, 1.0), (0.6, 0.9), CPU)
    ours, our_masks = crop_resize(image.expand(6, -1, -1, -1), mask.expand(6, -1, -1), boxes,
                                  (64, 48))
    assert our_masks is not None
    for box, out, out_mask in zip(boxes.int().tolist(), ours, our_masks, strict=True):
        theirs = TF.resized_crop(image, *box, [64, 48], antialias=True)
        assert (out - theirs).abs().max() < 1e-3
        assert torch.equal(out_mask, TF.resized_crop(tv_tensors.Mask(mask), *box, [64, 48]))


def test_a_mask_keeps_its_class_ids():
    masks = torch.randint(0, 5, (4, 32, 24))
    masks[:, :3] = 255                                  # IGNORE pixels stay IGNORE
    torch.manual_seed(0)
    _, out = resized_crop(v2.RandomResizedCrop(SIZE))(torch.zeros(4, 3, *SIZE), masks)
    assert out is not None and out.dtype == masks.dtype
    assert set(out.unique().tolist()) == {0, 1, 2, 3, 4, 255}


def test_batched_augmentation_reads_no_value_back(monkeypatch):
    """On CUDA each read of a tensor's value into Python waits for the device."""
    images, labels = batch()
    masks = (images[:, 0] > 127).long()
    augments = [(BatchAugment(augmentation("standard", SIZE), masks=False), labels),
                (BatchAugment(paired_transform("standard", SIZE), masks=True), masks)]
    counts = count_reads(monkeypatch)
    for augment, targets in augments:
        augment(images, targets)
    monkeypatch.undo()
    assert not counts, counts


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage, model", [("train_classifier", "models/classifier.pt"),
                                          ("train_segmenter", "models/segmenter.pt")])
def test_stages_train_with_augmentation_on_the_device(tmp_path: Path, stage: str, model: str):
    project = write_project(tmp_path, "auto")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["augment_on"] = "device"
    params["segment"]["augment"] = params["classify"]["augment"] = "standard"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run(project, "-m", f"stages.{stage}")
    assert load_checkpoint(project / model, ("classify", "semantic")).epoch >= 1
