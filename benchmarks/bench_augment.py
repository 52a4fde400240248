"""Device augmentation (`train.augment_on: device`) of one batch: the batched transforms of
fashionbg.nn.augment against the per-sample loop they replaced, in the same run.

    python benchmarks/bench_augment.py [--device cpu] [--batch 64] [--repeats 5]

For the classifier's `standard` and `strong` augmentation (labels) and the segmenter's
`standard` (masks moved with the images), at the demo's cache size (96x72) and at 224x224, on
random uint8 pixels: images/s of the per-sample loop (each sample through the task's v2
Compose, then stacked, as before), of the batched version, and batched / loop. Best of
`--repeats` after a warm-up call; on CUDA each timing waits for the device. It asserts nothing.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from torchvision.transforms import v2

from fashionbg.classify.data import augmentation
from fashionbg.core.cli import stage_main
from fashionbg.nn.augment import BatchAugment
from fashionbg.nn.device import resolve_device
from fashionbg.segment.data import augment_pair, paired_transform

SIZES = {"demo 96x72": (96, 72), "224x224": (224, 224)}
CASES: dict[str, tuple[Callable[[str, tuple[int, int]], v2.Compose | None], str, bool]] = {
    "classify standard": (augmentation, "standard", False),
    "classify strong": (augmentation, "strong", False),
    "segment standard": (paired_transform, "standard", True),
}
Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def per_sample_loop(transform: v2.Compose, masks: bool) -> Augment:
    """The loop nn.augment ran before (issue 32 item 6): every sample through the transform."""
    sample = partial(augment_pair, transform) if masks else transform

    def augment(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        pairs = [sample(x, y) for x, y in zip(inputs, targets)]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    return augment


def images_per_second(augment: Augment, inputs: torch.Tensor, targets: torch.Tensor,
                      repeats: int) -> float:
    def wait() -> None:
        if inputs.device.type == "cuda":
            torch.cuda.synchronize(inputs.device)

    augment(inputs, targets)            # warm-up
    best = float("inf")
    for _ in range(repeats):
        wait()
        start = time.perf_counter()
        augment(inputs, targets)
        wait()
        best = min(best, time.perf_counter() - start)
    return len(inputs) / best


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be at least 1")
    device = resolve_device(args.device, "--device")
    torch.manual_seed(0)
    print(f"batch {args.batch} on {device}, {torch.get_num_threads()} threads; images/s")
    print(f"{'case':<20} {'size':<11} {'loop':>8} {'batched':>8} {'ratio':>6}")
    for size_name, size in SIZES.items():
        inputs = torch.randint(0, 256, (args.batch, 3, *size), dtype=torch.uint8, device=device)
        for case, (build, name, masks) in CASES.items():
            transform = build(name, size)
            assert transform is not None
            targets = (torch.randint(0, 4, (args.batch, *size), device=device) if masks
                       else torch.arange(args.batch, device=device))
            loop = images_per_second(per_sample_loop(transform, masks), inputs, targets,
                                     args.repeats)
            batched = images_per_second(BatchAugment(transform, masks), inputs, targets,
                                        args.repeats)
            print(f"{case:<20} {size_name:<11} {loop:>8.0f} {batched:>8.0f} "
                  f"{batched / loop:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
