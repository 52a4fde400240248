"""A time per cell for the pre-flight, from a short timing: each distinct model of the preset
takes a few training steps on random pixels at its image size and batch size (capped), on the
device its params ask for; the time per image is scaled to the cell's images and epochs."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from fashionbg.background.sod import SodOptions, make_session, predict_alpha, session_device
from fashionbg.classify.models import build_classifier
from fashionbg.classify.params import read_classify
from fashionbg.core.errors import UserError
from fashionbg.nn.device import resolve_device
from fashionbg.segment.models import build_instance, build_semantic
from fashionbg.segment.params import read_segment
from fashionbg.study.definition import Cell

TIMED_STEPS = 2
TIMED_PHOTOS = 3
PHOTO = (600, 400, 3)      # a typical fashion photo (FashionStyle14's and Fashionpedia's sizes)
MAX_BATCH = 4              # images per timed step: enough to amortise a step's overhead
VALIDATION = 1.3           # an epoch's validation pass on top of its training pass
CELL_OVERHEAD_S = 30.0     # a cell's DVC workspace, imports and evaluation, measured on the demo


def estimates(cells: list[Cell], merged: dict[str, dict[str, Any]],
              images_of: dict[str, int | None]) -> list[str]:
    """One line per cell: its time, from its model's seconds per training image; `images_of`
    is the photos each source will give (None: unknown)."""
    lines: list[str] = []
    seen: dict[tuple, float | None] = {}   # model key → seconds per image (None: not measured)
    total_s = 0.0
    for cell in cells:
        p = merged[cell.name]
        key = _model_key(cell.arm.task, p)
        if key not in seen:
            try:
                seen[key] = _seconds_per_image(cell.arm.task, p)
            except UserError as err:   # e.g. a device this machine lacks: said above
                seen[key] = None
                lines.append(f"time: {cell.arm.name} not measured: {err}")
        seconds = seen[key]
        if seconds is None:
            continue
        images = images_of.get(p["data"]["source"])
        epochs = p["classify" if cell.arm.task == "classify" else "segment"]["epochs"]
        if images is None:
            lines.append(f"time: {cell.name}: {seconds:.3f} s per training image "
                         "(dataset size unknown)")
            continue
        train = math.ceil(images * _train_share(p))
        total = seconds * train * epochs * VALIDATION + CELL_OVERHEAD_S
        total_s += total
        lines.append(f"time: {cell.name}: about {_human(total)} ({train} training images x "
                     f"{epochs} epochs at {seconds:.3f} s per image)")
    lines.append(f"time: about {_human(total_s)} for the {len(cells)} cells one after another "
                 "(cells of unknown size not counted)")
    return lines


# What a step's time depends on (weights, seeds and learning rates do not change it).
SHAPE_KEYS = {"classify": ("arch", "batchnorm", "batch_size", "device"),
              "segment": ("task", "arch", "encoder", "decoder_width", "instance_backbone",
                          "batch_size", "device")}


def removal_estimates(datasets: list[tuple[str, dict[str, Any], int | None]],
                      homes: dict[str, Path]) -> list[str]:
    """Per dataset: background removal's time, from a few photos through rembg on the device
    `background.device` picks (rembg resizes every photo to its own input size, so random
    photos of a typical size stand for the dataset)."""
    lines = []
    for source, background, images in datasets:
        model = background["model"]
        if model not in homes or images is None:
            lines.append(f"time: background removal of {source} not estimated (weights or "
                         "dataset size unknown)")
            continue
        try:
            seconds, device = _seconds_per_photo(model, homes[model], background["device"])
        except UserError as err:   # a provider this machine lacks: said above
            lines.append(f"time: background removal of {source} not measured: {err}")
            continue
        lines.append(f"time: background removal of {source}, once for every cell: about "
                     f"{_human(seconds * images)} ({images} photos at {seconds:.3f} s each "
                     f"on {device}, one per call)")
    return lines


def _seconds_per_photo(model: str, home: Path, device: str) -> tuple[float, str]:
    session = make_session(model, home, device)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, PHOTO, dtype=np.uint8))
    predict_alpha(photo, session, SodOptions())         # warm-up
    start = time.perf_counter()
    for _ in range(TIMED_PHOTOS):
        predict_alpha(photo, session, SodOptions())
    return (time.perf_counter() - start) / TIMED_PHOTOS, session_device(session)


def _model_key(task: str, p: dict[str, Any]) -> tuple:
    section = "classify" if task == "classify" else "segment"
    return (task, tuple(str(p[section][k]) for k in SHAPE_KEYS[section]),
            tuple(p["data"]["image_size"]))


def _seconds_per_image(task: str, p: dict[str, Any]) -> float:
    h, w = p["data"]["image_size"]
    model: nn.Module
    if task == "classify":
        classify = read_classify(p)
        device = resolve_device(classify.device, "classify.device")
        model = build_classifier(classify, 14, load_weights=False)
        batch = min(classify.batch_size, MAX_BATCH)

        def loss(images: torch.Tensor) -> torch.Tensor:
            target = torch.zeros(len(images), dtype=torch.long, device=device)
            return F.cross_entropy(model(images), target)
    else:
        segment = read_segment(p)
        device = resolve_device(segment.device, "segment.device")
        batch = min(segment.batch_size, MAX_BATCH)
        if task == "semantic":
            model = build_semantic(segment, 28, load_weights=False)

            def loss(images: torch.Tensor) -> torch.Tensor:
                out = model(images)
                return F.cross_entropy(out, torch.zeros(out.shape[:1] + out.shape[2:],
                                                        dtype=torch.long, device=device))
        else:
            model = build_instance(segment, 28, (h, w), load_weights=False)
            box = torch.tensor([[w / 4, h / 8, 3 * w / 4, 7 * h / 8]], device=device)
            mask = torch.zeros(1, h, w, dtype=torch.uint8, device=device)
            mask[:, h // 8:7 * h // 8, w // 4:3 * w // 4] = 1
            target = {"boxes": box, "labels": torch.ones(1, dtype=torch.long, device=device),
                      "masks": mask}

            def loss(images: torch.Tensor) -> torch.Tensor:
                return sum(model(list(images), [target] * len(images)).values())
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters())
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, device=device)
    for step in range(TIMED_STEPS + 1):   # the first step warms up (allocations, kernels)
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss(images).backward()
        optimizer.step()
    _sync(device)
    return (time.perf_counter() - start) / (TIMED_STEPS * batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_share(p: dict[str, Any]) -> float:
    return float(p["data"]["split"][0])


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
