"""Colours and patterns: garment colours, two-colour patterns, smooth noise, and painting
the drawn figure into the photo, shaded and with antialiased edges."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from fashionbg.sources.demo.figure import Body, pick
from fashionbg.sources.demo.styles import (
    BAG,
    COLOURS,
    DETAIL,
    DRESS,
    HAIR,
    HAIR_COLOURS,
    OFF_PALETTE,
    OUTER,
    PANTS,
    PATTERNS,
    SCALE,
    SHOES,
    SKIN,
    SKIN_TONES,
    SKIRT,
    TOP,
    StyleSpec,
)

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
        noise = smooth_noise(rng, int(y.max()) + 1, int(x.max()) + 1, period)
        t = noise[y.astype(int), x.astype(int)] > rng.uniform(0.45, 0.6)
    else:
        t = np.zeros_like(x)
    return c0 + np.asarray(t, np.float32)[:, None] * (c1 - c0)


def swatch(kind: str, h: int, w: int, c0: np.ndarray, c1: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """A whole (h, w, 3) float image of one pattern."""
    y, x = np.indices((h, w), dtype=np.float32).reshape(2, -1)
    return _pattern(kind, y, x, c0, c1, rng, h / 256).reshape(h, w, 3)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Values in 0..1 that vary smoothly over about `cell` pixels."""
    small = rng.random((int(h / cell) + 2, int(w / cell) + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def textures(spec: StyleSpec, rng: np.random.Generator) -> dict[int, Texture]:
    """Pattern and two colours per material; garments follow the style, the rest is generic."""
    out = {}
    for m in (TOP, OUTER, PANTS, SKIRT, DRESS, BAG):
        kind = PATTERNS[pick(rng, spec.patterns)] if m != BAG else "solid"
        out[m] = (kind, _colour(rng, spec.palette), _colour(rng, spec.palette))
    skin = np.asarray(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], np.float32)
    hair = np.asarray(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], np.float32)
    shoe = _colour(rng, ("black", "white", "brown", "beige") + spec.palette[:2])
    out.update({SKIN: ("solid", skin, skin), HAIR: ("solid", hair, hair),
                SHOES: ("solid", shoe, shoe), DETAIL: ("solid", skin * 0.45, skin * 0.45)})
    return out


def paint_figure(photo: np.ndarray, parts: np.ndarray, materials: np.ndarray,
                 textures: dict[int, Texture], b: Body,
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
