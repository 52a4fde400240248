"""The `data:` section of params.yaml: which photos data/ holds and which variant training sees.

Several stages read it, each only its own keys (dvc.yaml lists them per stage); every reader
checks the whole section's key set, so a typo stops the first stage that reads it.
"""
from __future__ import annotations

from typing import Any

from fashionbg.core.errors import ParamError
from fashionbg.core.params import image_size, section

# What a prepared cache can show: the photo, rembg's removal, and the controlled variants of
# fashionbg/background/variants.py. original and rembg are always built (the paper's question).
VARIANTS = ("original", "rembg", "oracle", "only_bg", "no_fg", "mixed_same", "mixed_rand",
            "mixed_next")
REQUIRED = ("original", "rembg")
MIXED = ("mixed_same", "mixed_rand", "mixed_next")
DATA_KEYS = ("source", "path", "url", "sha256", "max_images", "max_bad_fraction", "split",
             "mask_grouping", "seed", "variant", "variants", "image_size", "demo")


def data_section(params: dict[str, Any]) -> dict[str, Any]:
    return section(params, "data", DATA_KEYS)


def read_variants(params: dict[str, Any]) -> tuple[str, ...]:
    """data.variants: which caches `prepare` builds, in VARIANTS order."""
    value = data_section(params).get("variants")
    expected = (f"a list of distinct names from {', '.join(VARIANTS)} holding "
                f"{' and '.join(REQUIRED)}")
    if not (isinstance(value, list) and len(set(map(str, value))) == len(value)
            and set(REQUIRED) <= set(value) <= set(VARIANTS)):
        raise ParamError("data.variants", value, expected)
    if set(MIXED) & set(value) and "only_bg" not in value:
        raise ParamError("data.variants", value,
                         f"only_bg listed too, since {', '.join(MIXED)} take its backgrounds")
    return tuple(v for v in VARIANTS if v in value)


def read_variant(params: dict[str, Any]) -> str:
    """data.variant: which prepared images training reads; one of the built data.variants."""
    built, variant = read_variants(params), data_section(params).get("variant")
    if variant not in built:
        raise ParamError("data.variant", variant,
                         "one of the variants data.variants builds: " + ", ".join(built))
    return variant


def read_image_size(params: dict[str, Any]) -> tuple[int, int]:
    """data.image_size: [height, width] of the prepared cache."""
    return image_size(data_section(params), "data", "image_size")


def other_variant(variant: str) -> str:
    """The variant a model is cross-tested on in the headline: rembg for a model trained on
    the photos, the photos for a model trained on any other variant."""
    return "rembg" if variant == "original" else "original"
