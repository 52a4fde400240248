"""Backgrounds: one painter per background family; the scene is blurred, unevenly lit
and shadowed under the figure's feet."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fashionbg.sources.demo.figure import Body, pick
from fashionbg.sources.demo.paint import smooth_noise, swatch
from fashionbg.sources.demo.styles import PATTERNS


def background(family: int, rng: np.random.Generator, w: int, h: int, b: Body) -> np.ndarray:
    """A scene of `family` whose floor meets the feet, out of focus, unevenly lit, with a shadow."""
    feet = b.top + b.u
    horizon = int(np.clip(feet - rng.uniform(0.1, 0.35) * b.u, 0.2 * h, h - 2))
    scene = _PAINTERS[family](rng, w, h, horizon)
    scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.5) * h / 256))
    light = 0.9 + 0.2 * smooth_noise(rng, h, w, rng.uniform(30, 90))
    shadow = Image.new("L", (w, h), 0)
    ImageDraw.Draw(shadow).ellipse([b.cx - 0.17 * b.u, feet - 0.02 * b.u, b.cx + 0.17 * b.u,
                                    feet + 0.025 * b.u], fill=255)
    dark = np.asarray(shadow.filter(ImageFilter.GaussianBlur(0.02 * b.u)), np.float32) / 255
    return np.asarray(scene, np.float32) * (light * (1 - 0.45 * dark))[..., None]


def _rand_colour(rng: np.random.Generator, lo: int = 40, hi: int = 230) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
    return r, g, b


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
    kind = PATTERNS[pick(rng, (0.5, 0.2, 0.1, 0.1, 0.1))]
    img = Image.fromarray(swatch(kind, h, w, wall, wall * 0.7 + alt * 0.3, rng).astype(np.uint8))
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
    grass = swatch("print", h, w, leaf * 1.3, leaf * 1.05, rng)
    img.paste(Image.fromarray(grass.astype(np.uint8)), (0, 0), _band(w, h, horizon))
    # Crowns overlap into a canopy cut by the frame, so no single tree stands out as an object.
    canopy = Image.new("L", (w, h), 0)
    d, c = ImageDraw.Draw(img), ImageDraw.Draw(canopy)
    for _ in range(int(rng.integers(6, 12))):
        tx, r = rng.uniform(-0.1, 1.1) * w, rng.uniform(0.12, 0.3) * w
        cy = rng.uniform(-0.1, 0.35) * horizon
        d.rectangle([tx - r * 0.1, cy, tx + r * 0.1, horizon], fill=(90, 65, 45))
        c.ellipse([tx - r, cy - r, tx + r, cy + r], fill=255)
    leaves = swatch("print", h, w, leaf, leaf * 0.6, rng)
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
    img = Image.fromarray(swatch(kind, h, w, c0, c1, rng).astype(np.uint8))
    ImageDraw.Draw(img).rectangle([0, horizon, w, h], fill=_rand_colour(rng, 60, 200))
    return img


_PAINTERS: tuple[Callable[[np.random.Generator, int, int, int], Image.Image], ...] = (
    _studio, _street, _room, _park, _brick, _textile)
