"""The `data:` section of params.yaml: which photos data/ holds and which variant training sees.

Several stages read it, each only its own keys (dvc.yaml lists them per stage); every reader
checks the whole section's key set, so a typo stops the first stage that reads it.
"""
from __future__ import annotations

from typing import Any

from fashionbg.core.params import choice, section, size_pair

VARIANTS = ("original", "rembg")
DATA_KEYS = ("source", "path", "url", "sha256", "max_images", "max_bad_fraction", "split",
             "mask_grouping", "seed", "variant", "image_size", "demo")


def data_section(params: dict[str, Any]) -> dict[str, Any]:
    return section(params, "data", DATA_KEYS)


def read_variant(params: dict[str, Any]) -> str:
    """data.variant: which prepared images training and evaluation read."""
    return choice(data_section(params), "data", "variant", VARIANTS)


def read_image_size(params: dict[str, Any]) -> tuple[int, int]:
    """data.image_size: [height, width] of the prepared cache."""
    return size_pair(data_section(params), "data", "image_size")


def other_variant(variant: str) -> str:
    """The variant a model is cross-tested on."""
    return next(v for v in VARIANTS if v != variant)
