"""The real training loop against compute alone, on the same model and the same batches, for the
classifier and the semantic segmenter: how much of an accelerator the input pipeline keeps busy.

    python benchmarks/bench_train_input.py [--device auto] [--augment-on loader|device]
        [--images 128] [--repeats 2]

Uses a synthetic prepared cache (random pixels and masks at the sizes below), so it needs no
pipeline outputs; models and batch sizes are those of params.yaml, augmentation `standard`.
Rows printed, images/s of training steps (forward, backward, update) per task:
  loop      the engine's epoch over a DataLoader from the cache: workers as train.workers auto
            picks, pinned memory on CUDA, augmentation where --augment-on says
  compute   the same model stepping over batches augmented beforehand and already on the device
and loop / compute (goal >= 0.9). The best of --repeats interleaved epochs each, after a
warm-up epoch. It asserts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fashionbg.classify.data import augmentation, split_loader
from fashionbg.classify.engine import classify_step
from fashionbg.classify.models import build_classifier
from fashionbg.classify.params import read_classify
from fashionbg.contracts.prepared import Prepared, load_prepared, save_prepared
from fashionbg.core.params import load_params
from fashionbg.nn.augment import place_augmentation
from fashionbg.nn.data import training_options
from fashionbg.nn.device import resolve_device, seed_everything
from fashionbg.nn.distributed import SINGLE
from fashionbg.nn.engine import Step, grad_scaler, train_one_epoch
from fashionbg.segment.params import read_segment
from fashionbg.segment.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
CLASSIFY_SIZE, SEGMENT_SIZE = (224, 224), (256, 192)    # FashionStyle14's; a segmentation crop
LABELS = ["a", "b", "c", "d"]
MASK_CLASSES = ["background", "skin", "top", "pants"]
AUGMENT = "standard"


def synthetic_cache(directory: Path, count: int, size: tuple[int, int]) -> Prepared:
    """`count` training rows of random pixels, labels and class-id masks, on disk like a real
    cache (memory-mapped when read back)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, *size, 3), dtype=np.uint8)
    masks = rng.integers(0, len(MASK_CLASSES), (count, *size), dtype=np.uint8)
    meta = {"labels": LABELS, "mask_classes": MASK_CLASSES, "image_size": list(size),
            "paths": [f"{i}.jpg" for i in range(count)], "variant": "original"}
    save_prepared(directory, images, masks, np.arange(count) % len(LABELS),
                  np.zeros(count, np.uint8), meta)
    return load_prepared(directory)


@dataclasses.dataclass
class Workload:
    name: str
    model: nn.Module
    loader: Any                 # the training loop's DataLoader
    step: Step                  # its step (augmenting on the device with --augment-on device)
    staged: list                # the same kind of batches, augmented, already on the device
    plain_step: Step


def on_device(batches: Any, device: torch.device) -> list:
    return [(x.to(device), y.to(device)) for x, y in batches]


def classify_workload(params: dict, data: Prepared, device: torch.device, on_device_aug: bool,
                      generator: torch.Generator) -> Workload:
    config = dataclasses.replace(read_classify(params), augment=AUGMENT)
    transform = augmentation(AUGMENT, CLASSIFY_SIZE)
    loader_augment, step = place_augmentation(transform, classify_step, on_device_aug)
    options = training_options(None, device, SINGLE, 0)
    loader = split_loader(data, "train", config.batch_size, loader_augment, generator, options)
    staged = on_device(split_loader(data, "train", config.batch_size, transform, generator),
                       device)
    model = build_classifier(config, len(LABELS), load_weights=False)
    return Workload(f"classify {config.arch}", model, loader, step, staged, classify_step)


def segment_workload(params: dict, data: Prepared, device: torch.device, on_device_aug: bool,
                     generator: torch.Generator) -> Workload:
    config = dataclasses.replace(read_segment(params), task="semantic", augment=AUGMENT,
                                 pretrained=False)
    task = make_task(config, data, ROOT / "unused")
    rows = task.rows("train")
    loader_augment, step = task.training(AUGMENT, on_device_aug)
    options = training_options(None, device, SINGLE, 0)
    loader = task.loader(task.dataset(data.images, rows, loader_augment), config.batch_size,
                         generator, options)
    staged = on_device(task.loader(task.dataset(data.images, rows, AUGMENT), config.batch_size,
                                   generator), device)
    model = task.build_model(load_weights=False)
    return Workload(f"segment {config.arch}-{config.encoder}", model, loader, step, staged,
                    task.step)


def compare(work: Workload, device: torch.device, repeats: int) -> tuple[float, float]:
    """Best images/s over `repeats` epochs of the loop and of compute alone."""
    model = work.model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = grad_scaler(device)

    def epoch(batches: Any, step: Step) -> float:
        return train_one_epoch(model, batches, step, optimizer, constant, scaler, device,
                               0).images_per_second

    epoch(work.loader, work.step)       # warm-up: workers, page-ins, allocations, kernels
    rates = [(epoch(work.loader, work.step), epoch(work.staged, work.plain_step))
             for _ in range(repeats)]       # interleaved, so a busy moment hits both alike
    return max(r[0] for r in rates), max(r[1] for r in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--augment-on", default="loader", choices=("loader", "device"))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    device = resolve_device(args.device, "--device")
    on_device_aug = args.augment_on == "device"
    workers = training_options(None, device, SINGLE, 0).workers
    print(f"{device}, augmentation {AUGMENT} on the {args.augment_on}, {workers} loader "
          f"workers (train.workers auto), {args.images} images per epoch")
    print(f"{'task':40s} {'loop img/s':>10s} {'compute img/s':>13s} {'loop/compute':>12s}")
    with tempfile.TemporaryDirectory() as tmp:
        for build, size in ((classify_workload, CLASSIFY_SIZE),
                            (segment_workload, SEGMENT_SIZE)):
            data = synthetic_cache(Path(tmp) / f"{size[0]}x{size[1]}", args.images, size)
            work = build(params, data, device, on_device_aug, seed_everything(0))
            loop, compute = compare(work, device, args.repeats)
            name = f"{work.name} {size[0]}x{size[1]}"
            print(f"{name:40s} {loop:10.1f} {compute:13.1f} {loop / compute:12.2f}", flush=True)


if __name__ == "__main__":
    main()
