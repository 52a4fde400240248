"""Codes every data contract shares, so readers of one contract need not load another."""
from __future__ import annotations

SPLITS = ("train", "val", "test")   # a split's position is its id in the prepared cache
IGNORE = 255                        # mask value for pixels without ground truth
