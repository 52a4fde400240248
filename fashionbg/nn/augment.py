"""`train.augment_on: device`: augmentation applied to each training batch on the device instead
of in the DataLoader workers, which frees the CPU when it cannot keep a GPU fed.

torchvision's v2 transforms accept a whole batch but draw one set of parameters for it (one crop
and one flip for every image). Here each transform of the task's v2 Compose becomes one batched
tensor operation whose per-sample parameters are drawn as tensors, from the distributions the
loader's transform draws them from: a random resized crop (torchvision's ten tries, then its
central fallback) resampled by one grid_sample, a flip by one `where`, colour jitter with
per-sample factors and a per-sample order. A transform without a batched form (RandAugment)
still runs per sample, in order. Parameters come from the generator of the batch's device
(seeded by seed_everything), so runs repeat, and no parameter is read back to the host.

The outputs differ from the loader's by rounding only: the batch is computed in float32 and
rounded to uint8 once (v2 truncates after each colour operation), a crop samples its border
half-pixel from the neighbouring pixels instead of repeating its edge, and masks take the
nearest pixel of the image's own sampling grid (v2's nearest resize floors, half a pixel off).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from fashionbg.nn.engine import Step

# (float32 images (N, C, H, W) in 0..255, class-id masks (N, H, W) as float32 or None) -> same
BatchOp = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]
CROP_TRIES = 10                     # torchvision's RandomResizedCrop.get_params
GREY = (0.2989, 0.587, 0.114)       # torchvision's rgb_to_grayscale weights


def crop_boxes(count: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], device: torch.device) -> torch.Tensor:
    """(top, left, height, width) of `count` random resized crops, as floats (count, 4):
    RandomResizedCrop.get_params for each sample, its ten tries drawn at once and the first
    that fits kept, else its fallback (the whole image, or a central crop of the nearest
    allowed ratio)."""
    shape = (count, CROP_TRIES)
    area = height * width * torch.empty(shape, device=device).uniform_(*scale)
    aspect = torch.empty(shape, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = aspect.exp()
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)          # the first try that fits (0 if none)
    found = fits.any(1)
    own = width / height
    fallback_w = width if own <= max(ratio) else round(height * max(ratio))
    fallback_h = height if own >= min(ratio) else round(width / min(ratio))
    w = torch.where(found, w.gather(1, first)[:, 0], float(fallback_w))
    h = torch.where(found, h.gather(1, first)[:, 0], float(fallback_h))
    top = torch.where(found, (torch.rand(count, device=device) * (height - h + 1)).floor(),
                      ((height - h) / 2).floor())
    left = torch.where(found, (torch.rand(count, device=device) * (width - w + 1)).floor(),
                       ((width - w) / 2).floor())
    return torch.stack([top, left, h, w], 1)


def crop_grid(boxes: torch.Tensor, height: int, width: int, size: tuple[int, int]
              ) -> torch.Tensor:
    """grid_sample's grid that resizes each box (crop_boxes) of a height x width image to
    `size`, sampling where F.interpolate (bilinear, align_corners=False) on the crop would."""
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(len(boxes), 2, 3, device=boxes.device)
    theta[:, 0, 0], theta[:, 0, 2] = w / width, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * top + h) / height - 1
    return F.affine_grid(theta, [len(boxes), 1, *size], align_corners=False)


def resized_crop(transform: v2.RandomResizedCrop) -> BatchOp:
    size = (int(transform.size[0]), int(transform.size[1]))

    def apply(images: torch.Tensor, masks: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        count, _, height, width = images.shape
        grid = crop_grid(crop_boxes(count, height, width, transform.scale, transform.ratio,
                                    images.device), height, width, size)
        images = F.grid_sample(images, grid, "bilinear", "border", align_corners=False)
        if masks is not None:
            masks = F.grid_sample(masks[:, None], grid, "nearest", "border",
                                  align_corners=False)[:, 0]
        return images, masks

    return apply


def horizontal_flip(transform: v2.RandomHorizontalFlip) -> BatchOp:
    def apply(images: torch.Tensor, masks: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        flip = torch.rand(len(images), device=images.device) < transform.p
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if masks is not None:
            masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
        return images, masks

    return apply


def _grey(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(GREY, device=images.device)[:, None, None]
    return (images * weights).sum(-3, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor
           ) -> torch.Tensor:
    return (factor * images + (1 - factor) * other).clamp(0, 255)


# v2.ColorJitter's adjustments (on the image only); a factor of 1 leaves an image as it is
JITTERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": lambda x, f: _blend(x, 0.0, f),
    "contrast": lambda x, f: _blend(x, _grey(x).mean((-3, -2, -1), keepdim=True), f),
    "saturation": lambda x, f: _blend(x, _grey(x), f),
}


def colour_jitter(transform: v2.ColorJitter) -> BatchOp:
    if transform.hue is not None:
        raise ValueError("device augmentation has no batched hue jitter")
    ranges = {name: getattr(transform, name) for name in JITTERS}
    used = [(name, bounds) for name, bounds in ranges.items() if bounds is not None]

    def apply(images: torch.Tensor, masks: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        count, device = len(images), images.device
        factors = [torch.empty(count, 1, 1, 1, device=device).uniform_(*bounds)
                   for _, bounds in used]
        # v2 applies its adjustments in a random order each call: here each sample its own
        order = torch.rand(count, len(used), device=device).argsort(1)
        for position in range(len(used)):
            for index, (name, _) in enumerate(used):
                chosen = order[:, position, None, None, None] == index
                images = JITTERS[name](images, torch.where(chosen, factors[index], 1.0))
        return images, masks

    return apply


def per_sample(transform: v2.Transform) -> BatchOp:
    """A transform with no batched form (RandAugment), called on each uint8 sample."""
    def apply(images: torch.Tensor, masks: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = _to_uint8(images)
        if masks is None:
            return torch.stack([transform(x) for x in pixels]).float(), None
        pairs = [transform(tv_tensors.Image(x), tv_tensors.Mask(m)) for x, m in zip(pixels, masks)]
        return (torch.stack([x.as_subclass(torch.Tensor) for x, _ in pairs]).float(),
                torch.stack([m.as_subclass(torch.Tensor) for _, m in pairs]))

    return apply


BATCHED: dict[type, Callable[[v2.Transform], BatchOp]] = {
    v2.RandomResizedCrop: resized_crop,
    v2.RandomHorizontalFlip: horizontal_flip,
    v2.ColorJitter: colour_jitter,
}


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


class BatchAugment:
    """A task's v2 Compose applied to a whole uint8 batch (N, C, H, W) on its device, each
    sample with its own parameters. With `masks`, the targets are class-id masks (N, H, W)
    cropped and flipped with their images; otherwise labels, passed through."""

    def __init__(self, transform: v2.Compose, masks: bool) -> None:
        self.ops = [BATCHED.get(type(t), per_sample)(t) for t in transform.transforms]
        self.masks = masks

    def __call__(self, images: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x, m = images.float(), targets.float() if self.masks else None
        for op in self.ops:
            x, m = op(x, m)
        return _to_uint8(x), (targets if m is None else m.to(targets.dtype))


def augmented_step(step: Step, augment: BatchAugment) -> Step:
    """`step` preceded by the batch's augmentation on the training device."""
    def augmented(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=False):   # mixed precision is the model's only
            inputs, targets = augment(inputs, targets)
        return step(model, inputs, targets, device)

    return augmented


def place_augmentation(transform: v2.Compose | None, step: Step, on_device: bool,
                       masks: bool = False) -> tuple[v2.Compose | None, Step]:
    """(the transform the loader applies, the step the engine runs) for `train.augment_on`;
    `masks`: the targets are class-id masks that move with the images."""
    if transform is None or not on_device:
        return transform, step
    return None, augmented_step(step, BatchAugment(transform, masks))


def place_named(augment: str, transform: v2.Compose | None, step: Step, on_device: bool,
                masks: bool = False) -> tuple[str, Step]:
    """place_augmentation for a dataset that builds `augment`'s transform itself: the name it
    keeps ("none" where the step augments on the device) and the step."""
    in_loader, step = place_augmentation(transform, step, on_device, masks)
    return (augment if in_loader is not None else "none"), step
