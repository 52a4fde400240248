"""The figure: a sampled standing body and outfit, drawn back to front as parts on a
canvas of part ids at SCALE times the photo size, each part remembering its material."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fashionbg.sources.demo.styles import (
    BAG,
    DETAIL,
    DRESS,
    HAIR,
    OUTER,
    PANTS,
    SCALE,
    SHOES,
    SKIN,
    SKIRT,
    TOP,
    StyleSpec,
)

Point = tuple[float, float]


@dataclass(frozen=True)
class Body:
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


def sample_body(rng: np.random.Generator, h: int, w: int) -> Body:
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
    return Body(cx, top, u, shoulder, 0.068 * rng.uniform(0.85, 1.15),
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


def sample_outfit(spec: StyleSpec, rng: np.random.Generator) -> _Outfit:
    lower = ("pants", "shorts", "skirt", "dress")[pick(rng, spec.lower)]
    outer = "none"
    if rng.random() < spec.outer:
        outer = "coat" if rng.random() < spec.coat else "jacket"
    long = outer != "none" or rng.random() < spec.long_sleeves
    sleeve = rng.uniform(0.85, 1.0) if long else rng.choice([0.0, rng.uniform(0.2, 0.5)])
    bag = ("none", "hand", "shoulder")[pick(rng, (1 - spec.bag, spec.bag / 2, spec.bag / 2))]
    return _Outfit(lower, float(sleeve), outer, bool(rng.random() < spec.wide),
                   bool(rng.random() < spec.boots), bag, rng.uniform(0.6, 0.9),
                   ("short", "long", "bun")[pick(rng, (0.35, 0.45, 0.2))])


def pick(rng: np.random.Generator, odds: tuple[float, ...]) -> int:
    p = np.asarray(odds, dtype=float)
    return int(rng.choice(len(p), p=p / p.sum()))


class Canvas:
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


def draw_figure(cv: Canvas, b: Body, o: _Outfit, rng: np.random.Generator) -> None:
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


def _torso(b: Body, y0: float, y1: float, flare: float = 0.0) -> list[Point]:
    """The body outline between heights y0 and y1 (figure units), widened by `flare`."""
    ys = (0.175, 0.25, 0.4, 0.5, 0.56)
    xs = (b.shoulder, b.shoulder * 0.88, b.waist, b.hip, b.hip)
    right = [(np.interp(y, ys, xs) + flare, y) for y in np.linspace(y0, y1, 6)]
    return [b.at(x, y) for x, y in right] + [b.at(-x, y) for x, y in reversed(right)]


def _draw_legs(cv: Canvas, b: Body, o: _Outfit) -> None:
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


def _draw_clothes(cv: Canvas, b: Body, o: _Outfit) -> None:
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


def _skirt(b: Body, y0: float, y1: float, flare: float) -> list[Point]:
    return [b.at(-b.waist - 0.005, y0), b.at(b.waist + 0.005, y0),
            b.at(b.hip + flare + 0.1 * (y1 - 0.6), y1), b.at(-b.hip - flare - 0.1 * (y1 - 0.6), y1)]


def _draw_arms(cv: Canvas, b: Body, o: _Outfit) -> None:
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


def _draw_bag(cv: Canvas, b: Body, o: _Outfit, rng: np.random.Generator) -> None:
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


def _draw_head(cv: Canvas, b: Body, o: _Outfit) -> None:
    cv.ellipse(SKIN, b.at(0, 0.068), 0.043 * b.u, 0.058 * b.u)
    cv.polygon(HAIR, [b.at(-0.047, 0.075), b.at(-0.045, 0.03), b.at(0, 0.0), b.at(0.045, 0.03),
                      b.at(0.047, 0.075), b.at(0.03, 0.035), b.at(-0.03, 0.035)])
    if o.hair == "bun":
        cv.ellipse(HAIR, b.at(0, 0.0), 0.025 * b.u, 0.02 * b.u)
    for x in (-0.017, 0.017):
        cv.ellipse(DETAIL, b.at(x, 0.065), 0.005 * b.u, 0.004 * b.u)
    cv.ellipse(DETAIL, b.at(0, 0.098), 0.01 * b.u, 0.003 * b.u)
