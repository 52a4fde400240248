"""`train.augment_on: device`: augmentation applied to each training batch on the device instead
of in the DataLoader workers, which frees the CPU when it cannot keep a GPU fed.

torchvision's v2 transforms accept a whole batch but draw one set of parameters for it (one crop
and one flip for every image). Here each transform of the task's v2 Compose becomes one batched
tensor operation whose per-sample parameters are drawn as tensors, from the distributions the
loader's transform draws them from: a random resized crop (torchvision's ten tries, then its
central fallback) resampled one axis at a time by gathering each output's source pixels, a flip
by one `where`, colour jitter with per-sample factors and a per-sample order. A transform
without a batched form (RandAugment) still runs per sample, in order. Parameters come from the
generator of the batch's device (seeded by seed_everything), so runs repeat, and no parameter
is read back to the host.

The pixels are those v2 computes for the same parameters, but for rounding: the batch is
computed in float32 and rounded to uint8 once (v2 truncates after each colour operation). A
crop is only ever enlarged here (the crop sizes are the image's); shrinking would need v2's
antialiasing, which this does not do.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from fashionbg.nn.engine import Step

# (float32 images (N, C, H, W) in 0..255, class-id masks (N, H, W) or None) -> the same
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


def _linear_taps(start: torch.Tensor, length: torch.Tensor, out: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along one axis, per sample: the two source pixels and the weight of the second for each
    of `out` outputs resizing pixels [start, start + length), as F.interpolate (bilinear,
    align_corners=False) computes them on the crop."""
    scale = (length / out)[:, None]
    source = ((torch.arange(out, device=start.device) + 0.5) * scale - 0.5).clamp(min=0)
    low = source.floor()
    high = torch.minimum(low + 1, length[:, None] - 1)
    return (start[:, None] + low).long(), (start[:, None] + high).long(), source - low


def _nearest_taps(start: torch.Tensor, length: torch.Tensor, out: int) -> torch.Tensor:
    """The source pixel of each of `out` outputs, as torch's `nearest` resize picks it."""
    source = (torch.arange(out, device=start.device) * (length / out)[:, None]).floor()
    return (start[:, None] + torch.minimum(source, length[:, None] - 1)).long()


def _take(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """x's entries along `dim` at each sample's `index` (N, out)."""
    view = [len(x)] + [1] * (x.dim() - 1)
    view[dim] = index.shape[1]
    shape = list(x.shape)
    shape[dim] = index.shape[1]
    return x.gather(dim, index.view(view).expand(shape))


def crop_resize(images: torch.Tensor, masks: torch.Tensor | None, boxes: torch.Tensor,
                size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each sample's box (crop_boxes) resized to `size`: bilinear for the float images
    (N, C, H, W), nearest for the masks (N, H, W), one axis at a time by gathering each
    output's source pixels (what v2's resized_crop computes, when it enlarges)."""
    top, left, height, width = boxes.unbind(1)
    low, high, weight = _linear_taps(top, height, size[0])
    images = torch.lerp(_take(images, low, 2), _take(images, high, 2), weight[:, None, :, None])
    low, high, weight = _linear_taps(left, width, size[1])
    images = torch.lerp(_take(images, low, 3), _take(images, high, 3), weight[:, None, None, :])
    if masks is not None:
        masks = _take(_take(masks, _nearest_taps(top, height, size[0]), 1),
                      _nearest_taps(left, width, size[1]), 2)
    return images, masks


def resized_crop(transform: v2.RandomResizedCrop) -> BatchOp:
    size = (int(transform.size[0]), int(transform.size[1]))

    def apply(images: torch.Tensor, masks: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        count, _, height, width = images.shape
        return crop_resize(images, masks, crop_boxes(count, height, width, transform.scale,
                                                     transform.ratio, images.device), size)

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
    # weights as Python numbers: a weight tensor copied to the GPU would wait for it each call
    red, green, blue = images.split(1, dim=-3)
    return GREY[0] * red + GREY[1] * green + GREY[2] * blue


def colour_jitter(transform: v2.ColorJitter) -> BatchOp:
    """v2.ColorJitter's brightness, contrast and saturation (on the image only), each a blend
    with black, the image's mean grey, or its grey image, by a factor drawn per sample."""
    if transform.hue is not None:
        raise ValueError("device augmentation has no batched hue jitter")
    used = [(name, bounds) for name in ("brightness", "contrast", "saturation")
            if (bounds := getattr(transform, name)) is not None]

    def apply(images: torch.Tensor, masks: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        count, device = len(images), images.device
        factors = torch.stack([torch.empty(count, device=device).uniform_(*bounds)
                               for _, bounds in used], 1)
        # v2 applies its adjustments in a random order each call: here each sample its own
        order = torch.rand(count, len(used), device=device).argsort(1)
        for position in range(len(used)):
            op = order[:, position]
            grey = _grey(images)
            other = torch.zeros_like(grey)          # brightness: a blend with black
            for index, (name, _) in enumerate(used):
                chosen = (op == index)[:, None, None, None]
                if name == "contrast":
                    other = torch.where(chosen, grey.mean((-3, -2, -1), keepdim=True), other)
                elif name == "saturation":
                    other = torch.where(chosen, grey, other)
            factor = factors.gather(1, op[:, None])[:, :, None, None]
            images = (factor * images + (1 - factor) * other).clamp(0, 255)
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
        x, m = images.float(), targets if self.masks else None
        for op in self.ops:
            x, m = op(x, m)
        return _to_uint8(x), (targets if m is None else m)


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
