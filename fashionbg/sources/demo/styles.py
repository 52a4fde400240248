"""The demo's vocabulary: styles, mask classes, background families, patterns, the
materials a figure is drawn in, colours, and what each style tends to wear."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
