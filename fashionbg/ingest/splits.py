"""Deterministic splits and subsamples that do not depend on file-system order or machine.

Every item gets a rank from sha256(seed, name). Ordering a group by that rank and cutting it
gives a stratified split; taking the first k gives a subsample. Both are stable: adding files
moves only a few items, and the `max_images: 100` subset is contained in the `max_images: 200`
one.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fashionbg.contracts.codes import SPLITS
from fashionbg.core.errors import ParamError, UserError
from fashionbg.core.params import integer, is_number, optional_integer

T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    seed: int
    max_images: int | None                 # None: every image
    shares: tuple[float, float, float]     # for splits the pipeline draws


def sampling(data: dict[str, Any]) -> Sampling:
    """data.seed, data.max_images and data.split, checked."""
    seed = integer(data, "data", "seed", minimum=0)
    limit = optional_integer(data, "data", "max_images", minimum=1)
    return Sampling(seed, limit, fractions(data))


def rank(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{name}".encode()).digest()


def fractions(data: dict[str, Any]) -> tuple[float, float, float]:
    """data.split: train/val/test fractions for splits the pipeline draws."""
    value = data.get("split")
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(is_number(v) and v >= 0 for v in value)
            and abs(sum(value) - 1.0) <= 1e-6 and value[0] > 0):
        raise ParamError("data.split", value, "three finite non-negative numbers [train, val, "
                         "test] summing to 1, with train > 0")
    return float(value[0]), float(value[1]), float(value[2])


def draw_splits(items: Sequence[T], name: Callable[[T], str], group: Callable[[T], Hashable],
                shares: tuple[float, float, float], seed: int) -> dict[str, str]:
    """name → split, stratified by group: each group is cut at the cumulative fractions."""
    bounds = (shares[0], shares[0] + shares[1])
    out: dict[str, str] = {}
    for members in _groups(items, group).values():
        ordered = sorted((name(m) for m in members), key=lambda n: rank(seed, n))
        cut1, cut2 = (round(len(ordered) * b) for b in bounds)
        for i, n in enumerate(ordered):
            out[n] = SPLITS[0] if i < cut1 else SPLITS[1] if i < cut2 else SPLITS[2]
    return out


def complete_splits(official: dict[str, str], group: Callable[[str], Hashable],
                    shares: tuple[float, float, float], seed: int) -> tuple[dict[str, str], str]:
    """Turn whatever official splits a source has (name → split) into train/val/test.

    All three: kept. Train and val only: val becomes the test set (how papers report such
    datasets) and a new val is drawn from train. Train and test: val is drawn from train. No
    train: every item is drawn afresh. Returns the assignment and a sentence saying which.
    """
    present = set(official.values())
    if present >= set(SPLITS):
        return dict(official), "official train/val/test"
    if "train" not in present or present == {"train"}:  # nothing usable was held out
        return draw_splits(list(official), str, group, shares, seed), _drawn(shares)
    out = {n: "train" if s == "train" else "test" for n, s in official.items()}
    val_share = shares[1] / (shares[0] + shares[1])
    train = [n for n, s in out.items() if s == "train"]
    out.update(draw_splits(train, str, group, (1 - val_share, val_share, 0.0), seed))
    given = "train and val (used as test)" if "val" in present else "train and test"
    return out, f"official {given}; val drawn from train ({val_share:.0%} of it)"


def check_coverage(rows: Sequence[tuple[str, str]], labels: Sequence[str],
                   val_share: float) -> list[str]:
    """Refuse an empty train or test split (or an empty val one when data.split asks for a
    val share); return a warning per class that is missing from val or test.

    `rows` are (split, label) pairs; labels are empty for sources without image classes.
    """
    counts = {s: sum(split == s for split, _ in rows) for s in SPLITS}
    needed = [s for s in SPLITS if s != "val" or val_share > 0]
    if empty := [s for s in needed if not counts[s]]:
        shown = ", ".join(f"{s} {n}" for s, n in counts.items())
        raise UserError(f"the {' and '.join(empty)} split would be empty ({shown}); change "
                        "data.split or data.max_images, or give the source's split lists")
    held_out = {(split, label) for split, label in rows}
    return [f"class {label} has no {split} images" for label in labels
            for split in SPLITS[1:] if counts[split] and (split, label) not in held_out]


def _drawn(shares: tuple[float, float, float]) -> str:
    return "drawn, stratified: " + "/".join(f"{s:.0%}" for s in shares)


def subsample(items: Sequence[T], k: int | None, name: Callable[[T], str],
              group: Callable[[T], Hashable], seed: int) -> list[T]:
    """At most k items, each group keeping its share (largest remainder), in the input order."""
    if k is None or k >= len(items):
        return list(items)
    groups = _groups(items, group)
    exact = {g: k * len(m) / len(items) for g, m in groups.items()}
    quota = {g: math.floor(e) for g, e in exact.items()}
    by_remainder = sorted(groups, key=lambda g: (quota[g] - exact[g], str(g)))
    for g in by_remainder[:k - sum(quota.values())]:
        quota[g] += 1
    keep: set[str] = set()
    for g, members in groups.items():
        keep.update(sorted((name(m) for m in members), key=lambda n: rank(seed, n))[:quota[g]])
    return [item for item in items if name(item) in keep]


def _groups(items: Sequence[T], group: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    out: dict[Hashable, list[T]] = defaultdict(list)
    for item in items:
        out[group(item)].append(item)
    return out
