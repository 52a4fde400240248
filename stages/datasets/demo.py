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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from ..common.params import ParamError, integer, number, size_pair
from .raw import SPLITS, RawWriter, SourceResult
from .splits import fractions

STYLES: tuple[str, ...] = ("casual", "formal", "street", "bohemian", "sporty", "rock", "preppy",
                           "romantic")
MASK_CLASSES: tuple[str, ...] = ("background", "skin", "hair", "top", "outerwear", "pants",
                                 "skirt", "dress", "shoes", "bag")
BACKGROUNDS: tuple[str, ...] = ("studio", "street", "room", "park", "brick", "textile")
PATTERNS = ("solid", "stripes", "checks", "dots", "print")

# Materials are the mask class ids, plus face details that paint dark but count as skin.
SKIN, HAIR, TOP, OUTER, PANTS, SKIRT, DRESS, SHOES, BAG, DETAIL = range(1, 11)
MATERIAL_CLASS = np.array([0, SKIN, HAIR, TOP, OUTER, PANTS, SKIRT, DRESS, SHOES, BAG, SKIN],
                          dtype=np.uint8)
SCALE = 2  # draw at twice the size, then downsample with antialiasing

COLOURS = {
    "white": (236, 236, 230), "cream": (236, 222, 196), "beige": (205, 185, 150),
    "grey": (140, 140, 142), "charcoal": (62, 64, 68), "black": (30, 30, 32),
    "navy": (34, 46, 88), "denim": (72, 102, 148), "lightblue": (150, 185, 222),
    "red": (188, 36, 42), "burgundy": (112, 30, 48), "pink": (236, 160, 182),
    "lavender": (186, 166, 216), "orange": (232, 122, 42), "mustard": (210, 166, 52),
    "olive": (112, 116, 62), "green": (42, 122, 72), "brown": (116, 76, 46),
    "terracotta": (190, 96, 66), "neon": (172, 230, 62), "royal": (42, 82, 200),
}
OFF_PALETTE = 0.1  # share of garment colours drawn from all COLOURS
SKIN_TONES = ((241, 204, 178), (224, 172, 138), (198, 140, 102), (150, 98, 66), (96, 62, 44))
HAIR_COLOURS = ((24, 20, 18), (70, 44, 28), (120, 80, 44), (200, 160, 96), (150, 60, 30),
                (160, 160, 160))


@dataclass(frozen=True)
class StyleSpec:
    """What a style tends to wear; every style can wear every garment, only the odds differ."""

    lower: tuple[float, float, float, float]  # odds of pants, shorts, skirt, dress
    outer: float        # odds of a jacket or coat
    coat: float         # share of those that are long coats
    long_sleeves: float
    palette: tuple[str, ...]
    patterns: tuple[float, float, float, float, float]  # odds of each of PATTERNS
    bag: float
    boots: float
    wide: float         # odds of wide trousers or a flared skirt


STYLE_SPECS: tuple[StyleSpec, ...] = (
    StyleSpec((.55, .15, .15, .15), .3, .2, .35, ("denim", "white", "grey", "navy", "beige",
              "olive", "red"), (.5, .25, .1, .05, .1), .3, .1, .2),
    StyleSpec((.45, 0, .3, .25), .75, .35, .8, ("black", "charcoal", "navy", "white", "grey",
              "burgundy", "beige"), (.75, .15, .05, .05, 0), .5, .1, .3),
    StyleSpec((.7, .15, .1, .05), .5, .2, .6, ("black", "grey", "olive", "orange", "white",
              "red", "neon"), (.45, .1, .05, .05, .35), .25, .3, .6),
    StyleSpec((.15, .05, .4, .4), .25, .3, .5, ("terracotta", "mustard", "cream", "olive",
              "brown", "burgundy", "orange"), (.2, .15, .1, .25, .3), .6, .5, .5),
    StyleSpec((.4, .45, .1, .05), .35, 0, .3, ("red", "royal", "white", "black", "neon", "grey",
              "navy"), (.5, .4, 0, .05, .05), .15, 0, .2),
    StyleSpec((.55, .1, .25, .1), .65, .15, .6, ("black", "charcoal", "red", "white", "denim",
              "burgundy", "grey"), (.6, .1, .2, .02, .08), .3, .7, .1),
    StyleSpec((.4, .15, .35, .1), .45, .2, .5, ("navy", "white", "beige", "green", "red", "pink",
              "lightblue"), (.45, .3, .2, .05, 0), .45, .1, .15),
    StyleSpec((.1, .05, .35, .5), .2, .3, .35, ("pink", "cream", "lavender", "white", "red",
              "lightblue", "burgundy"), (.35, .05, .05, .3, .25), .55, .15, .4),
)


@dataclass(frozen=True)
class DemoConfig:
    seed: int
    images_per_class: int
    image_size: tuple[int, int]  # (height, width) of generated photos
    context_correlation: float   # probability that the background family follows the style
    split: tuple[float, float, float]  # train/val/test fractions (data.split)


def validate(data: dict[str, Any]) -> DemoConfig:
    """Check data.seed and data.demo.* before anything is written."""
    seed = integer(data, "data", "seed", minimum=0)
    demo = data.get("demo")
    if not isinstance(demo, dict):
        raise ParamError("data.demo", demo, "a mapping with images_per_class, image_size "
                         "and context_correlation")
    size = size_pair(demo, "data.demo", "image_size")
    if min(size) < 32:
        raise ParamError("data.demo.image_size", list(size), "two integers >= 32 [height, width]")
    split = fractions(data)
    if split[2] <= 0:  # the demo has no official test set to fall back on
        raise ParamError("data.split", data.get("split"), "a test share > 0 for the demo source")
    return DemoConfig(
        seed=seed,
        # one image per split at least, so every split sees every style
        images_per_class=integer(demo, "data.demo", "images_per_class", minimum=len(SPLITS)),
        image_size=size,
        context_correlation=number(demo, "data.demo", "context_correlation", 0.0, 1.0),
        split=split,
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
    jobs = [(style, i) for style in range(len(STYLES)) for i in range(config.images_per_class)]
    own = 0
    for style, i in tqdm(jobs, desc="demo", unit="img", disable=None):
        rng = image_rng(config.seed, style, i)
        family = background_family(config, style, rng)
        own += family == style % len(BACKGROUNDS)
        image, mask = render(config, style, rng, family)
        name = STYLES[style]
        writer.add_image(f"{name}/{name}_{i:04d}.jpg", image, split_of[i], label=name, mask=mask)
    total = len(STYLES) * config.images_per_class
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
    body = _sample_body(rng, h, w)
    outfit = _sample_outfit(STYLE_SPECS[style], rng)
    canvas = _Canvas((w, h))
    _draw_figure(canvas, body, outfit, rng)
    parts = np.asarray(canvas.image)
    materials = np.asarray(canvas.materials, dtype=np.uint8)[parts]
    photo = _background(family, rng, w, h, body)
    _paint_figure(photo, parts, materials, _textures(STYLE_SPECS[style], rng), body, rng)
    photo += rng.normal(0, 2.5, photo.shape).astype(np.float32)  # sensor noise
    # The mask samples the 2x canvas where PIL's nearest-neighbour downsampling would.
    mask = MATERIAL_CLASS[materials[SCALE // 2::SCALE, SCALE // 2::SCALE]]
    return Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), mask


# ---- the figure -----------------------------------------------------------------------------

Point = tuple[float, float]


@dataclass(frozen=True)
class _Body:
    """A standing pose; x, y in figure units (1 = figure height) from the top of the head."""

    cx: float
    top: float
    u: float
    shoulder: float  # half-widths
    waist: float
    hip: float
    arms: tuple[tuple[Point, Point, Point], ...]  # shoulder, elbow, wrist; left then right
    legs: tuple[tuple[Point, Point, Point], ...]  # hip, knee, ankle
    light: float     # -1..1: which side is lit

    def at(self, x: float, y: float) -> Point:
        return self.cx + x * self.u, self.top + y * self.u


def _sample_body(rng: np.random.Generator, h: int, w: int) -> _Body:
    u = min(rng.uniform(0.65, 0.9) * h, w / 0.62)
    reach = 0.3 * u
    cx = rng.uniform(reach, w - reach) if w > 2 * reach else w / 2
    top = rng.uniform(0.02 * h, max(0.02 * h, 0.985 * h - u))
    shoulder = 0.1 * rng.uniform(0.9, 1.1)
    arms, legs = [], []
    for side in (-1, 1):
        a = rng.uniform(0.08, 0.35)
        b = a + rng.uniform(-0.5, 0.3)
        s = (side * (shoulder - 0.015), 0.19)
        e = (s[0] + side * 0.19 * math.sin(a), s[1] + 0.19 * math.cos(a))
        arms.append((s, e, (e[0] + side * 0.17 * math.sin(b), e[1] + 0.17 * math.cos(b))))
        c, d = rng.uniform(0.0, 0.1), rng.uniform(-0.05, 0.06)
        hp = (side * 0.045, 0.52)
        k = (hp[0] + side * 0.21 * math.sin(c), hp[1] + 0.21 * math.cos(c))
        legs.append((hp, k, (k[0] + side * 0.2 * math.sin(d), k[1] + 0.2 * math.cos(d))))
    return _Body(cx, top, u, shoulder, 0.068 * rng.uniform(0.85, 1.15),
                 0.09 * rng.uniform(0.9, 1.12), tuple(arms), tuple(legs),
                 rng.uniform(-1, 1))


@dataclass(frozen=True)
class _Outfit:
    lower: str        # pants | shorts | skirt | dress
    sleeve: float     # share of the arm a sleeve covers (0 sleeveless, 1 long)
    outer: str        # none | jacket | coat
    wide: bool
    boots: bool
    bag: str          # none | hand | shoulder
    hem: float        # skirt or dress hem, figure units
    hair: str         # short | long | bun


def _sample_outfit(spec: StyleSpec, rng: np.random.Generator) -> _Outfit:
    lower = ("pants", "shorts", "skirt", "dress")[_pick(rng, spec.lower)]
    outer = "none"
    if rng.random() < spec.outer:
        outer = "coat" if rng.random() < spec.coat else "jacket"
    long = outer != "none" or rng.random() < spec.long_sleeves
    sleeve = rng.uniform(0.85, 1.0) if long else rng.choice([0.0, rng.uniform(0.2, 0.5)])
    bag = ("none", "hand", "shoulder")[_pick(rng, (1 - spec.bag, spec.bag / 2, spec.bag / 2))]
    return _Outfit(lower, float(sleeve), outer, bool(rng.random() < spec.wide),
                   bool(rng.random() < spec.boots), bag, rng.uniform(0.6, 0.9),
                   ("short", "long", "bun")[_pick(rng, (0.35, 0.45, 0.2))])


def _pick(rng: np.random.Generator, odds: tuple[float, ...]) -> int:
    p = np.asarray(odds, dtype=float)
    return int(rng.choice(len(p), p=p / p.sum()))


class _Canvas:
    """Shapes drawn back to front, at SCALE times the photo size, on an image of part ids.

    Coordinates are photo pixels; each part remembers its material.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.image = Image.new("L", (size[0] * SCALE, size[1] * SCALE), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.materials = [0]

    def _part(self, material: int) -> int:
        self.materials.append(material)
        return len(self.materials) - 1

    def polygon(self, material: int, points: list[Point]) -> None:
        self.draw.polygon([(x * SCALE, y * SCALE) for x, y in points], fill=self._part(material))

    def ellipse(self, material: int, c: Point, rx: float, ry: float) -> None:
        self._ellipse(self._part(material), c, rx, ry)

    def _ellipse(self, part: int, c: Point, rx: float, ry: float) -> None:
        x, y = c[0] * SCALE, c[1] * SCALE
        self.draw.ellipse([x - rx * SCALE, y - ry * SCALE, x + rx * SCALE, y + ry * SCALE],
                          fill=part)

    def limb(self, material: int, p: Point, q: Point, w0: float, w1: float) -> None:
        """A tapered segment with rounded ends, as one part."""
        part = self._part(material)
        dx, dy = q[0] - p[0], q[1] - p[1]
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n / 2 * SCALE, dx / n / 2 * SCALE
        (px, py), (qx, qy) = (p[0] * SCALE, p[1] * SCALE), (q[0] * SCALE, q[1] * SCALE)
        self.draw.polygon([(px + nx * w0, py + ny * w0), (qx + nx * w1, qy + ny * w1),
                           (qx - nx * w1, qy - ny * w1), (px - nx * w0, py - ny * w0)],
                          fill=part)
        self._ellipse(part, p, w0 / 2, w0 / 2)
        self._ellipse(part, q, w1 / 2, w1 / 2)


def _lerp(p: Point, q: Point, t: float) -> Point:
    return p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t


def _draw_figure(cv: _Canvas, b: _Body, o: _Outfit, rng: np.random.Generator) -> None:
    if o.hair == "long":
        cv.polygon(HAIR, [b.at(-0.05, 0.05), b.at(0.05, 0.05), b.at(0.07, 0.28),
                          b.at(-0.07, 0.28)])
    cv.polygon(SKIN, [b.at(-0.02, 0.1), b.at(0.02, 0.1), b.at(0.025, 0.2), b.at(-0.025, 0.2)])
    cv.polygon(SKIN, _torso(b, 0.175, 0.5))
    _draw_legs(cv, b, o)
    _draw_clothes(cv, b, o)
    _draw_arms(cv, b, o)
    if o.bag != "none":
        _draw_bag(cv, b, o, rng)
    _draw_head(cv, b, o)


def _torso(b: _Body, y0: float, y1: float, flare: float = 0.0) -> list[Point]:
    """The body outline between heights y0 and y1 (figure units), widened by `flare`."""
    ys = (0.175, 0.25, 0.4, 0.5, 0.56)
    xs = (b.shoulder, b.shoulder * 0.88, b.waist, b.hip, b.hip)
    right = [(np.interp(y, ys, xs) + flare, y) for y in np.linspace(y0, y1, 6)]
    return [b.at(x, y) for x, y in right] + [b.at(-x, y) for x, y in reversed(right)]


def _draw_legs(cv: _Canvas, b: _Body, o: _Outfit) -> None:
    for hp, knee, ankle in b.legs:
        cv.limb(SKIN, b.at(*hp), b.at(*knee), 0.085 * b.u, 0.05 * b.u)
        cv.limb(SKIN, b.at(*knee), b.at(*ankle), 0.05 * b.u, 0.036 * b.u)
    if o.lower in ("pants", "shorts"):
        cv.polygon(PANTS, _torso(b, 0.4, 0.56, 0.005))
        wide = 0.03 if o.wide else 0.0
        for hp, knee, ankle in b.legs:
            if o.lower == "pants":
                cv.limb(PANTS, b.at(*hp), b.at(*knee), 0.1 * b.u, (0.064 + wide) * b.u)
                cv.limb(PANTS, b.at(*knee), b.at(*ankle), (0.064 + wide) * b.u,
                        (0.05 + 1.5 * wide) * b.u)
            else:
                cv.limb(PANTS, b.at(*hp), b.at(*_lerp(hp, knee, 0.55)), 0.1 * b.u, 0.085 * b.u)
    for side, (_, knee, ankle) in zip((-1, 1), b.legs):
        if o.boots:
            cv.limb(SHOES, b.at(*_lerp(knee, ankle, 0.35)), b.at(*ankle), 0.056 * b.u,
                    0.05 * b.u)
        x, y = ankle
        cv.polygon(SHOES, [b.at(x - 0.025, y - 0.01), b.at(x + 0.025, y - 0.01),
                           b.at(x + side * 0.05 + 0.012, y + 0.06),
                           b.at(x + side * 0.05 - 0.035 * side - 0.012, y + 0.065)])


def _draw_clothes(cv: _Canvas, b: _Body, o: _Outfit) -> None:
    flare = 0.06 if o.wide else 0.025
    if o.lower == "dress":
        cv.polygon(DRESS, _torso(b, 0.19, 0.45))
        cv.polygon(DRESS, _skirt(b, 0.38, o.hem, flare))
    else:
        cv.polygon(TOP, _torso(b, 0.19, 0.47, 0.01))
        if o.lower == "skirt":
            cv.polygon(SKIRT, _skirt(b, 0.4, min(o.hem, 0.8), flare))
    if o.outer != "none":
        bottom = 0.75 if o.outer == "coat" else 0.55
        for side in (-1, 1):
            edge = [b.at(side * x, y) for x, y in ((b.shoulder + 0.01, 0.18),
                                                  (b.hip + 0.03, bottom), (0.01, bottom),
                                                  (0.035, 0.3), (0.035, 0.19))]
            cv.polygon(OUTER, edge)


def _skirt(b: _Body, y0: float, y1: float, flare: float) -> list[Point]:
    return [b.at(-b.waist - 0.005, y0), b.at(b.waist + 0.005, y0),
            b.at(b.hip + flare + 0.1 * (y1 - 0.6), y1), b.at(-b.hip - flare - 0.1 * (y1 - 0.6), y1)]


def _draw_arms(cv: _Canvas, b: _Body, o: _Outfit) -> None:
    sleeve = OUTER if o.outer != "none" else (DRESS if o.lower == "dress" else TOP)
    for s, e, wr in b.arms:
        cv.limb(SKIN, b.at(*s), b.at(*e), 0.052 * b.u, 0.042 * b.u)
        cv.limb(SKIN, b.at(*e), b.at(*wr), 0.042 * b.u, 0.032 * b.u)
        if o.sleeve > 0:
            end = min(o.sleeve * 2, 1.0)
            cv.limb(sleeve, b.at(*s), b.at(*_lerp(s, e, end)), 0.062 * b.u, 0.05 * b.u)
            if o.sleeve > 0.5:
                cv.limb(sleeve, b.at(*e), b.at(*_lerp(e, wr, o.sleeve * 2 - 1)), 0.05 * b.u,
                        0.042 * b.u)
        hand = _lerp(e, wr, 1.2)
        cv.ellipse(SKIN, b.at(*hand), 0.022 * b.u, 0.03 * b.u)


def _draw_bag(cv: _Canvas, b: _Body, o: _Outfit, rng: np.random.Generator) -> None:
    side = int(rng.integers(2))
    s, _, wr = b.arms[side]
    bw, bh = rng.uniform(0.07, 0.12), rng.uniform(0.06, 0.1)
    if o.bag == "hand":
        x, y = wr[0], wr[1] + 0.04
        cv.limb(BAG, b.at(x - bw / 3, y), b.at(x, wr[1] - 0.005), 0.008 * b.u, 0.008 * b.u)
    else:
        x, y = s[0] + (0.5 - side) * 0.04, 0.5
        cv.limb(BAG, b.at(*s), b.at(x, y), 0.01 * b.u, 0.01 * b.u)
    cv.polygon(BAG, [b.at(x - bw / 2, y), b.at(x + bw / 2, y), b.at(x + bw / 2 + 0.01, y + bh),
                     b.at(x - bw / 2 - 0.01, y + bh)])


def _draw_head(cv: _Canvas, b: _Body, o: _Outfit) -> None:
    cv.ellipse(SKIN, b.at(0, 0.068), 0.043 * b.u, 0.058 * b.u)
    cv.polygon(HAIR, [b.at(-0.047, 0.075), b.at(-0.045, 0.03), b.at(0, 0.0), b.at(0.045, 0.03),
                      b.at(0.047, 0.075), b.at(0.03, 0.035), b.at(-0.03, 0.035)])
    if o.hair == "bun":
        cv.ellipse(HAIR, b.at(0, 0.0), 0.025 * b.u, 0.02 * b.u)
    for x in (-0.017, 0.017):
        cv.ellipse(DETAIL, b.at(x, 0.065), 0.005 * b.u, 0.004 * b.u)
    cv.ellipse(DETAIL, b.at(0, 0.098), 0.01 * b.u, 0.003 * b.u)


# ---- colours and patterns -------------------------------------------------------------------

Texture = tuple[str, np.ndarray, np.ndarray]  # pattern kind and its two colours


def _colour(rng: np.random.Generator, names: tuple[str, ...]) -> np.ndarray:
    """A colour from `names`, or sometimes any colour: palettes are preferred, not exclusive."""
    names = tuple(COLOURS) if rng.random() < OFF_PALETTE else names
    base = np.asarray(COLOURS[names[int(rng.integers(len(names)))]], np.float32)
    return np.clip(base + rng.normal(0, 10, 3), 0, 255).astype(np.float32)


def _pattern(kind: str, y: np.ndarray, x: np.ndarray, c0: np.ndarray, c1: np.ndarray,
             rng: np.random.Generator, unit: float) -> np.ndarray:
    """Colours (n, 3) of a two-colour pattern at n points (x, y in photo pixels).

    `unit` (image height / 256) keeps the pattern's scale the same at any image size.
    """
    period = rng.uniform(4, 13) * unit
    if kind == "stripes":
        angle = rng.choice([0.0, math.pi / 2, math.pi / 4])
        t = ((x * math.cos(angle) + y * math.sin(angle)) / period % 1.0) < rng.uniform(.3, .6)
    elif kind == "checks":
        d = rng.uniform(0.2, 0.5)
        t = 0.5 * (x / period % 1.0 < d) + 0.5 * (y / period % 1.0 < d)
    elif kind == "dots":
        r = period * rng.uniform(0.15, 0.3)
        t = (x % period - period / 2) ** 2 + (y % period - period / 2) ** 2 < r * r
    elif kind == "print":
        noise = _smooth_noise(rng, int(y.max()) + 1, int(x.max()) + 1, period)
        t = noise[y.astype(int), x.astype(int)] > rng.uniform(0.45, 0.6)
    else:
        t = np.zeros_like(x)
    return c0 + np.asarray(t, np.float32)[:, None] * (c1 - c0)


def _swatch(kind: str, h: int, w: int, c0: np.ndarray, c1: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """A whole (h, w, 3) float image of one pattern."""
    y, x = np.indices((h, w), dtype=np.float32).reshape(2, -1)
    return _pattern(kind, y, x, c0, c1, rng, h / 256).reshape(h, w, 3)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Values in 0..1 that vary smoothly over about `cell` pixels."""
    small = rng.random((int(h / cell) + 2, int(w / cell) + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _textures(spec: StyleSpec, rng: np.random.Generator) -> dict[int, Texture]:
    """Pattern and two colours per material; garments follow the style, the rest is generic."""
    out = {}
    for m in (TOP, OUTER, PANTS, SKIRT, DRESS, BAG):
        kind = PATTERNS[_pick(rng, spec.patterns)] if m != BAG else "solid"
        out[m] = (kind, _colour(rng, spec.palette), _colour(rng, spec.palette))
    skin = np.asarray(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float32)
    hair = np.asarray(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], np.float32)
    shoe = _colour(rng, ("black", "white", "brown", "beige") + spec.palette[:2])
    out.update({SKIN: ("solid", skin, skin), HAIR: ("solid", hair, hair),
                SHOES: ("solid", shoe, shoe), DETAIL: ("solid", skin * 0.45, skin * 0.45)})
    return out


def _paint_figure(photo: np.ndarray, parts: np.ndarray, materials: np.ndarray,
                  textures: dict[int, Texture], b: _Body,
                  rng: np.random.Generator) -> None:
    """Fill each material with its pattern, shade it (a lit side, rounded edges, seams) and blend
    the 2x figure into the photo with its pixel coverage as alpha: antialiased edges."""
    ys, xs = np.nonzero(parts)
    y0, x0 = ys.min() // SCALE, xs.min() // SCALE  # in photo pixels, so blocks align
    y1, x1 = ys.max() // SCALE + 1, xs.max() // SCALE + 1
    crop = np.s_[y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE]
    part, mat = parts[crop], materials[crop]
    colour = np.zeros(part.shape + (3,), np.float32)
    for m in np.unique(mat[mat > 0]):
        kind, c0, c1 = textures[int(m)]
        yy, xx = np.nonzero(mat == m)
        colour[yy, xx] = _pattern(kind, yy / SCALE + y0, xx / SCALE + x0, c0, c1, rng,
                                  photo.shape[0] / 256)
    inside = (part > 0).astype(np.float32)
    soft = np.asarray(Image.fromarray((inside * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.025 * b.u * SCALE)), np.float32) / 255
    x = ((np.arange(part.shape[1], dtype=np.float32) / SCALE + x0) - b.cx) / (0.2 * b.u)
    shade = (0.72 + 0.28 * soft) * (1 + 0.18 * b.light * np.clip(x, -1, 1))[None, :]
    seam = np.zeros(part.shape, bool)
    seam[1:] |= part[1:] != part[:-1]
    seam[:, 1:] |= part[:, 1:] != part[:, :-1]
    colour *= (np.where(seam, 0.78, 1.0) * shade * inside)[..., None]
    h, w = y1 - y0, x1 - x0
    rgb = colour.reshape(h, SCALE, w, SCALE, 3).mean(axis=(1, 3))
    alpha = inside.reshape(h, SCALE, w, SCALE).mean(axis=(1, 3))[..., None]
    photo[y0:y1, x0:x1] = rgb + photo[y0:y1, x0:x1] * (1 - alpha)


# ---- backgrounds ----------------------------------------------------------------------------

def _background(family: int, rng: np.random.Generator, w: int, h: int, b: _Body) -> np.ndarray:
    """A scene of `family` whose floor meets the feet, out of focus, unevenly lit, with a shadow."""
    feet = b.top + b.u
    horizon = int(np.clip(feet - rng.uniform(0.1, 0.35) * b.u, 0.2 * h, h - 2))
    scene = _PAINTERS[family](rng, w, h, horizon)
    scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.5) * h / 256))
    light = 0.9 + 0.2 * _smooth_noise(rng, h, w, rng.uniform(30, 90))
    shadow = Image.new("L", (w, h), 0)
    ImageDraw.Draw(shadow).ellipse([b.cx - 0.17 * b.u, feet - 0.02 * b.u, b.cx + 0.17 * b.u,
                                    feet + 0.025 * b.u], fill=255)
    dark = np.asarray(shadow.filter(ImageFilter.GaussianBlur(0.02 * b.u)), np.float32) / 255
    return np.asarray(scene, np.float32) * (light * (1 - 0.45 * dark))[..., None]


def _rand_colour(rng: np.random.Generator, lo: int = 40, hi: int = 230) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _gradient(w: int, h: int, top: np.ndarray, bottom: np.ndarray) -> Image.Image:
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    column = np.clip(top * (1 - t) + bottom * t, 0, 255)
    return Image.fromarray(np.broadcast_to(column, (h, w, 3)).astype(np.uint8))


def _sky(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    haze = rng.uniform(0, 60)
    return _gradient(w, h, np.array([110, 155, 215], np.float32) + haze,
                     np.array([205, 218, 232], np.float32))


def _studio(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    c = np.asarray(_rand_colour(rng, 60, 240), np.float32)
    return _gradient(w, h, c * rng.uniform(0.7, 1.0), np.minimum(c * rng.uniform(1.0, 1.2), 255))


def _street(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    img = _sky(rng, w, h)
    d = ImageDraw.Draw(img)
    x = -int(rng.integers(0, w // 4))
    while x < w:
        bw, top = int(rng.uniform(0.25, 0.6) * w), int(rng.uniform(-0.2, 0.5) * horizon)
        d.rectangle([x, top, x + bw, horizon], fill=_rand_colour(rng, 70, 220))
        win, gap = int(rng.uniform(0.04, 0.08) * w), int(rng.uniform(0.03, 0.06) * w)
        shade = _rand_colour(rng, 20, 120)
        for wy in range(top + gap, horizon - win, win + gap):
            for wx in range(x + gap, x + bw - win, win + gap):
                d.rectangle([wx, wy, wx + win, wy + int(win * 1.4)], fill=shade)
        x += bw
    d.rectangle([0, horizon, w, h], fill=_rand_colour(rng, 90, 170))
    for y in range(horizon, h, max(2, int(0.05 * h))):
        d.line([0, y, w, y], fill=(80, 80, 80))
    return img


def _room(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    wall, alt = np.array(_rand_colour(rng, 120, 240), np.float32), np.array(_rand_colour(rng))
    kind = PATTERNS[_pick(rng, (0.5, 0.2, 0.1, 0.1, 0.1))]
    img = Image.fromarray(_swatch(kind, h, w, wall, wall * 0.7 + alt * 0.3, rng).astype(np.uint8))
    d = ImageDraw.Draw(img)
    floor = np.asarray(_rand_colour(rng, 70, 200))
    d.rectangle([0, horizon, w, h], fill=tuple(floor))
    for y in range(horizon, h, max(2, int(0.03 * h))):
        d.line([0, y, w, y], fill=tuple(int(v) for v in floor * 0.8))
    for _ in range(int(rng.integers(2, 5))):
        fw, fh = rng.uniform(0.15, 0.45) * w, rng.uniform(0.1, 0.4) * h
        fx = rng.uniform(-0.1, 1.0) * w
        fy = horizon - fh if rng.random() < 0.6 else rng.uniform(0.05, 0.4) * h
        d.rectangle([fx, fy, fx + fw, fy + fh], fill=_rand_colour(rng), outline=(40, 40, 40),
                    width=2)
    return img


def _park(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    img = _sky(rng, w, h)
    leaf = np.array([rng.integers(30, 90), rng.integers(80, 140), 45], np.float32)
    grass = _swatch("print", h, w, leaf * 1.3, leaf * 1.05, rng)
    img.paste(Image.fromarray(grass.astype(np.uint8)), (0, 0), _band(w, h, horizon))
    # Crowns overlap into a canopy cut by the frame, so no single tree stands out as an object.
    canopy = Image.new("L", (w, h), 0)
    d, c = ImageDraw.Draw(img), ImageDraw.Draw(canopy)
    for _ in range(int(rng.integers(6, 12))):
        tx, r = rng.uniform(-0.1, 1.1) * w, rng.uniform(0.12, 0.3) * w
        cy = rng.uniform(-0.1, 0.35) * horizon
        d.rectangle([tx - r * 0.1, cy, tx + r * 0.1, horizon], fill=(90, 65, 45))
        c.ellipse([tx - r, cy - r, tx + r, cy + r], fill=255)
    leaves = _swatch("print", h, w, leaf, leaf * 0.6, rng)
    img.paste(Image.fromarray(leaves.astype(np.uint8)), (0, 0), canopy)
    return img


def _band(w: int, h: int, top: int) -> Image.Image:
    """A paste mask covering the rows from `top` down."""
    band = Image.new("L", (w, h), 0)
    ImageDraw.Draw(band).rectangle([0, top, w, h], fill=255)
    return band


def _brick(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    mortar, brick = _rand_colour(rng, 150, 220), np.asarray(_rand_colour(rng, 80, 200))
    img = Image.new("RGB", (w, h), mortar)
    d = ImageDraw.Draw(img)
    bh = max(3, int(rng.uniform(0.025, 0.05) * h))
    bw = 3 * bh
    for row, y in enumerate(range(0, horizon, bh)):
        for x in range(-(row % 2) * bw // 2, w, bw):
            tone = tuple(int(v) for v in np.clip(brick * rng.uniform(0.8, 1.15), 0, 255))
            d.rectangle([x + 1, y + 1, x + bw - 1, y + bh - 1], fill=tone)
    d.rectangle([0, horizon, w, h], fill=_rand_colour(rng, 80, 160))
    return img


def _textile(rng: np.random.Generator, w: int, h: int, horizon: int) -> Image.Image:
    """A wall covered in a garment-like pattern: the hardest nuisance for a classifier."""
    kind = PATTERNS[1 + int(rng.integers(4))]
    c0 = np.asarray(_rand_colour(rng), np.float32)
    c1 = c0 + rng.uniform(0.3, 0.7) * (np.asarray(_rand_colour(rng), np.float32) - c0)
    img = Image.fromarray(_swatch(kind, h, w, c0, c1, rng).astype(np.uint8))
    ImageDraw.Draw(img).rectangle([0, horizon, w, h], fill=_rand_colour(rng, 60, 200))
    return img


_PAINTERS: tuple[Callable[[np.random.Generator, int, int, int], Image.Image], ...] = (
    _studio, _street, _room, _park, _brick, _textile)
