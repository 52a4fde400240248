"""`train.augment_on: device`: each sample of a batch gets its own random augmentation on the
device, a seed repeats it, and both training stages train with it end to end."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from test_distributed import run, write_project

from fashionbg.classify.data import augmentation
from fashionbg.nn.augment import augment_batch
from fashionbg.nn.checkpoint import load_checkpoint
from fashionbg.nn.device import seed_everything
from fashionbg.segment.data import augment_pair, paired_transform

SIZE = (32, 24)


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
    out, kept = augment_batch(transform, images, labels)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(kept, labels)                # labels pass through untouched
    assert len({tuple(o.flatten().tolist()) for o in out}) == len(out)


@pytest.mark.parametrize("name", ["standard", "strong"])
def test_device_augmentation_repeats_with_the_seed(name):
    images, labels = batch()

    def draw() -> torch.Tensor:
        seed_everything(5)
        return augment_batch(augmentation(name, SIZE), images, labels)[0]

    assert torch.equal(draw(), draw())


def test_segmentation_pairs_move_image_and_mask_together():
    images = torch.zeros(8, 3, *SIZE, dtype=torch.uint8)
    images[:, :, 8:20, 3:11] = 250                  # one off-centre garment
    masks = (images[:, 0] > 127).long()
    seed_everything(0)
    pair = partial(augment_pair, paired_transform("standard", SIZE))
    out, out_masks = augment_batch(pair, images, masks)
    assert out_masks.dtype == torch.long and set(out_masks.unique().tolist()) <= {0, 1}
    assert not all(torch.equal(out_masks[0], m) for m in out_masks[1:])
    # the crop and flip move the mask with the image (nearest vs bilinear: edges may differ)
    agree = ((out[:, 0] > 127).long() == out_masks).float().mean()
    assert agree > 0.97, agree


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
