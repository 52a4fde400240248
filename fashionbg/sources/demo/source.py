"""The built-in offline demo dataset: people in fashion outfits in front of cluttered scenes.

It stands in for FashionStyle14 (style labels) and Fashionpedia (per-pixel garment masks), so the
pipeline runs with no download. Each style is a distribution over outfits, palettes and patterns
that overlap, so no single cue names the style. The background family follows the style with
probability `context_correlation`, so users can measure what removing useful context costs.
Every image comes from its own generator seeded by (seed, style, index): the output does not
depend on generation order or on how many images are asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashionbg.contracts.codes import SPLITS
from fashionbg.contracts.raw import RawWriter, SourceResult
from fashionbg.core.errors import ParamError
from fashionbg.core.params import integer, number, optional_integer, section, size_pair
from fashionbg.ingest.splits import fractions, subsample
from fashionbg.sources.demo.figure import Canvas, draw_figure, sample_body, sample_outfit
from fashionbg.sources.demo.paint import paint_figure, textures
from fashionbg.sources.demo.scenes import background
from fashionbg.sources.demo.styles import (
    BACKGROUNDS,
    MASK_CLASSES,
    MATERIAL_CLASS,
    SCALE,
    STYLE_SPECS,
    STYLES,
)

DEMO_KEYS = ("images_per_class", "image_size", "context_correlation")
# The demo draws its photos on the CPU: far above a useful demo, low enough that a typo does
# not run for hours or fill the disk.
MAX_DEMO_SIDE = 1024
MAX_DEMO_PER_CLASS = 5000


@dataclass(frozen=True)
class DemoConfig:
    seed: int
    images_per_class: int
    image_size: tuple[int, int]  # (height, width) of generated photos
    context_correlation: float   # probability that the background family follows the style
    split: tuple[float, float, float]  # train/val/test fractions (data.split)
    max_images: int | None       # data.max_images: a stratified subsample of the rendered set


def validate(data: dict[str, Any]) -> DemoConfig:
    """Check data.seed, data.split, data.max_images and data.demo.* before anything is
    written."""
    seed = integer(data, "data", "seed", minimum=0)
    demo = section(data, "demo", DEMO_KEYS, within="data")
    size = size_pair(demo, "data.demo", "image_size", minimum=32, maximum=MAX_DEMO_SIDE,
                     why=": the demo draws every photo on the CPU")
    split = fractions(data)
    if split[2] <= 0:  # the demo has no official test set to fall back on
        raise ParamError("data.split", data.get("split"), "a test share > 0 for the demo source")
    return DemoConfig(
        seed=seed,
        # one image per split at least, so every split sees every style
        images_per_class=integer(demo, "data.demo", "images_per_class", minimum=len(SPLITS),
                                 maximum=MAX_DEMO_PER_CLASS,
                                 why=" (the demo draws every photo on the CPU)"),
        image_size=size,
        context_correlation=number(demo, "data.demo", "context_correlation", 0.0, 1.0),
        split=split,
        max_images=optional_integer(data, "data", "max_images", minimum=1),
    )


def split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder rounding, then one image for every split with a non-zero share."""
    exact = [n * f for f in fractions]
    counts = [math.floor(e) for e in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[:n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if fractions[i] > 0 and counts[i] == 0:
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    return counts


def image_rng(seed: int, style: int, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image and of build order."""
    return np.random.default_rng([seed, style, index])


def background_family(config: DemoConfig, style: int, rng: np.random.Generator) -> int:
    """The style's own family with probability context_correlation, else any family."""
    if rng.random() < config.context_correlation:
        return style % len(BACKGROUNDS)
    return int(rng.integers(len(BACKGROUNDS)))


def build(config: DemoConfig, writer: RawWriter) -> SourceResult:
    """Render every style's images into `writer`, split per style in the configured shares."""
    counts = split_counts(config.images_per_class, config.split)
    # Images are drawn independently, so contiguous blocks make an unbiased stratified split.
    split_of = [s for s, c in zip(SPLITS, counts) for _ in range(c)]
    jobs = subsample([(style, i) for style in range(len(STYLES))
                      for i in range(config.images_per_class)], config.max_images,
                     name=lambda job: f"{job[0]}/{job[1]}", group=lambda job: job[0],
                     seed=config.seed)
    own = 0
    for style, i in tqdm(jobs, desc="demo", unit="img", disable=None):
        rng = image_rng(config.seed, style, i)
        family = background_family(config, style, rng)
        own += family == style % len(BACKGROUNDS)
        image, mask = render(config, style, rng, family)
        name = STYLES[style]
        writer.add_image(f"{name}/{name}_{i:04d}.jpg", image, split_of[i], label=name, mask=mask)
    total = len(jobs)
    return SourceResult(labels=list(STYLES), mask_classes=list(MASK_CLASSES), extra={
        "source": "demo", "tasks": ["classification", "semantic", "instance"],
        "seed": config.seed, "image_size": list(config.image_size),
        "context_correlation": config.context_correlation,
        "background_families": list(BACKGROUNDS), "own_family_share": round(own / total, 4),
    })


def render(config: DemoConfig, style: int, rng: np.random.Generator,
           family: int | None = None) -> tuple[Image.Image, np.ndarray]:
    """One RGB photo of a person in a style-typical outfit and its uint8 mask of class ids.

    `family` picks the background; by default it is drawn with background_family.
    """
    if family is None:
        family = background_family(config, style, rng)
    h, w = config.image_size
    body = sample_body(rng, h, w)
    outfit = sample_outfit(STYLE_SPECS[style], rng)
    canvas = Canvas((w, h))
    draw_figure(canvas, body, outfit, rng)
    parts = np.asarray(canvas.image)
    materials = np.asarray(canvas.materials, dtype=np.uint8)[parts]
    photo = background(family, rng, w, h, body)
    paint_figure(photo, parts, materials, textures(STYLE_SPECS[style], rng), body, rng)
    photo += rng.normal(0, 2.5, photo.shape).astype(np.float32)  # sensor noise
    # The mask samples the 2x canvas where PIL's nearest-neighbour downsampling would.
    mask = MATERIAL_CLASS[materials[SCALE // 2::SCALE, SCALE // 2::SCALE]]
    return Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), mask
