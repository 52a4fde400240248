"""A time per cell for the pre-flight, from a short timing: each distinct model of the preset
takes a few training steps on random pixels the way its cells train it (its task's rehearsal:
model, optimizer and training step as the params set them up; image size, per-device batch,
precision, memory format; the batch capped on the CPU for memory) and a few validation
batches, on the device its params ask for; the seconds per image are scaled to the cell's
images, epochs and processes. The timing runs in a child process (`measure_apart`), so the
process that drives the study for hours holds no GPU memory nor CUDA context afterwards."""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fashionbg.background.sod import SodOptions, make_session, predict_alpha, session_device
from fashionbg.contracts.tasks import TASKS
from fashionbg.core.errors import UserError
from fashionbg.nn.engine import amp_dtype, autocast, grad_scaler, precision_name
from fashionbg.nn.params import read_train
from fashionbg.study.plan.definition import Cell
from fashionbg.tasks import TASK_CLASSES

TIMED_STEPS = 2
TIMED_PHOTOS = 3
PHOTO = (600, 400, 3)      # a typical fashion photo (FashionStyle14's and Fashionpedia's sizes)
CPU_BATCH = 8              # the most images a timed step takes on the CPU (memory, time)
CELL_OVERHEAD_S = 30.0     # a cell's DVC workspace, imports and plots, measured on the demo
OUTPUT_BYTES = 64 << 20    # a cell's outputs besides its checkpoint: dvclive, plots, metrics


@dataclass(frozen=True)
class ModelTiming:
    train_s: float          # seconds per training image on one device
    eval_s: float           # seconds per validation or test image
    batch: int              # images per timed step (the per-device batch, capped on the CPU)
    how: str                # device and precision, as the time line says them
    checkpoint_bytes: int   # the model's weights as the cell saves them


@dataclass(frozen=True)
class Timings:
    models: dict[tuple, ModelTiming | str]     # model key → its timing, or why it has none
    removal: dict[str, tuple[float, str] | str]  # source → (s per photo, device), or why not
    pid: int                                   # the process that timed them
    gpu_names: str                             # the GPUs that process saw, by name


@dataclass(frozen=True)
class CellEstimate:
    seconds: float
    output_bytes: int
    line: str


def measure_apart(cells: list[Cell], merged: dict[str, dict[str, Any]],
                  removals: list[tuple[str, dict[str, Any]]], homes: dict[str, Path]) -> Timings:
    """`measure` in a child process (spawned: nothing of this process's state, a CUDA context
    least of all, is inherited, and whatever the timing allocates goes with the child)."""
    models = {_model_key(c.arm.task, merged[c.name]): (c.arm.task, merged[c.name]) for c in cells}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as child:
        return child.submit(measure, models, removals, homes).result()


def measure(models: dict[tuple, tuple[str, dict[str, Any]]],
            removals: list[tuple[str, dict[str, Any]]], homes: dict[str, Path]) -> Timings:
    """Time each distinct model (key → task and params) and each dataset's background removal
    (source and its `background` params)."""
    timed: dict[tuple, ModelTiming | str] = {}
    for key, (task, p) in models.items():
        try:
            timed[key] = _time_model(task, p)
        except UserError as err:   # e.g. a device this machine lacks: said by the pre-flight
            timed[key] = str(err)
    removal: dict[str, tuple[float, str] | str] = {}
    for source, background in removals:
        model = background["model"]
        if model not in homes:
            removal[source] = "weights unknown"
            continue
        try:
            removal[source] = _seconds_per_photo(model, homes[model], background["device"])
        except UserError as err:   # a provider this machine lacks: said by the pre-flight
            removal[source] = str(err)
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Timings(timed, removal, os.getpid(), names)


def estimate(cell: Cell, p: dict[str, Any], timings: Timings, images: int | None
             ) -> CellEstimate | str:
    """The cell's time and outputs, from its model's timing and its dataset's `images`; a line
    saying why not where either is unknown."""
    timed = timings.models[_model_key(cell.arm.task, p)]
    if isinstance(timed, str):
        return f"time: {cell.arm.name} not measured: {timed}"
    if images is None:
        return (f"time: {cell.name}: {timed.train_s:.3f} s per training image "
                "(dataset size unknown)")
    epochs = p[TASKS[cell.arm.task].section]["epochs"]
    nproc = read_train(p).nproc
    shares = [float(x) for x in p["data"]["split"]]
    train, val, test = (math.ceil(images * share) for share in shares)
    per_epoch = timed.train_s * train / nproc + timed.eval_s * val   # validation on rank 0
    seconds = epochs * per_epoch + timed.eval_s * test + CELL_OVERHEAD_S
    line = (f"time: {cell.name}: about {human(seconds)} ({epochs} epochs x ({train} training "
            f"images at {timed.train_s:.4f} s / {nproc} device(s) + {val} validation images at "
            f"{timed.eval_s:.4f} s) + test; timed at batch {timed.batch}, {timed.how})")
    return CellEstimate(seconds, timed.checkpoint_bytes + OUTPUT_BYTES, line)


def removal_lines(sets: list[tuple[str, int | None]], timings: Timings) -> list[str]:
    """Per dataset: background removal's time, once for every cell."""
    lines = []
    for source, images in sets:
        timed = timings.removal.get(source, "not timed")
        if isinstance(timed, str) or images is None:
            why = timed if isinstance(timed, str) else "dataset size unknown"
            lines.append(f"time: background removal of {source} not estimated ({why})")
            continue
        seconds, device = timed
        lines.append(f"time: background removal of {source}, once for every cell: about "
                     f"{human(seconds * images)} ({images} photos at {seconds:.3f} s each "
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
    spec = TASKS[task]
    train = p["train"]
    return (task, tuple(str(p[spec.section][k]) for k in spec.step_keys),
            tuple(p["data"]["image_size"]), str(train["precision"]), bool(train["channels_last"]),
            int(train["nproc"]))


def _time_model(task: str, p: dict[str, Any]) -> ModelTiming:
    """Seconds per image of a few training steps and validation batches, as the cell runs them
    (after one warm-up step of each: allocations, kernel choice)."""
    h, w = p["data"]["image_size"]
    train = read_train(p)
    start = 0.0
    rehearsal = TASK_CLASSES[task].rehearsal(p)
    device = rehearsal.device
    batch = max(1, rehearsal.batch_size // train.nproc)   # each process's share, as the stage
    batch = min(batch, CPU_BATCH) if device.type == "cpu" else batch   # splits it; CPU: memory
    dtype = amp_dtype(device, train.precision)
    model = rehearsal.model
    model.to(device, memory_format=train.memory_format).train()  # type: ignore[call-overload]
    optimizer = rehearsal.optimizer(model)
    scaler = grad_scaler(device, dtype)
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8,
                           device=device).contiguous(memory_format=train.memory_format)
    inputs, targets = rehearsal.batch(images)
    for step in range(TIMED_STEPS + 1):
        if step == 1:
            start = _now(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            value, _ = rehearsal.step(model, inputs, targets, device)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
    train_s = (_now(device) - start) / (TIMED_STEPS * len(images))
    model.eval()   # validation batches are the training batch's size
    with torch.inference_mode(), autocast(device, dtype):
        for step in range(TIMED_STEPS + 1):
            if step == 1:
                start = _now(device)
            model(inputs)
    eval_s = (_now(device) - start) / (TIMED_STEPS * len(images))
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return ModelTiming(train_s, eval_s, len(images), f"{device.type}, {precision_name(dtype)}"
                       + (", channels-last" if train.channels_last else ""), weights)


def _now(device: torch.device) -> float:
    """The clock, once the device has finished what it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
