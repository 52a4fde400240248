"""The registry of data sources the `download` stage can build `data/raw/` from.

A source is two functions: `validate(data_params) -> config` checks every key it reads and
raises ParamError before anything is written; `build(config, writer) -> SourceResult` fills a
RawWriter (images, masks, index rows, refusals). The data.* keys a source has no use for must
keep their "unset" value, so no setting is silently ignored.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fashionbg.contracts.params import data_section
from fashionbg.contracts.raw import RawWriter, SourceResult
from fashionbg.core.errors import ParamError
from fashionbg.core.params import choice, number
from fashionbg.sources import coco, fashionpedia, fashionstyle14, folder
from fashionbg.sources.demo import source as demo

# The value of each data.* key that a source may leave unread.
UNSET = {"path": None, "url": None, "sha256": None, "mask_grouping": "category"}
GENERATED = "it generates its photos"
NO_MASKS = "it has no masks to group"


@dataclass(frozen=True)
class Source:
    validate: Callable[[dict[str, Any]], Any]
    build: Callable[[Any, RawWriter], SourceResult]
    unused: dict[str, str] = field(default_factory=dict)  # key of UNSET → why it is not read


SOURCES: dict[str, Source] = {
    "demo": Source(demo.validate, demo.build, {
        "path": GENERATED, "url": GENERATED, "sha256": GENERATED,
        "mask_grouping": "its mask classes are fixed"}),
    "fashionstyle14": Source(fashionstyle14.validate, fashionstyle14.build,
                             {"mask_grouping": NO_MASKS}),
    "fashionpedia": Source(fashionpedia.validate, fashionpedia.build),
    "folder": Source(folder.validate, folder.build, {"mask_grouping": NO_MASKS}),
    "coco": Source(coco.validate, coco.build),
}


def check_unused(name: str, data: dict[str, Any]) -> None:
    """Refuse a data.* key the source would ignore, by name."""
    for key, why in SOURCES[name].unused.items():
        unset = UNSET[key]
        if data.get(key) != unset:
            raise ParamError(f"data.{key}", data.get(key),
                             f"{unset if unset is not None else 'null'} for data.source = "
                             f"{name} ({why})")


@dataclass(frozen=True)
class SourceParams:
    name: str
    source: Source
    config: Any                 # what the source's validate returned
    max_bad_fraction: float


def read_source(params: dict[str, Any]) -> SourceParams:
    """data.source and every data.* key the download stage reads, checked before anything is
    written (the stage and the study's pre-flight run the same reader)."""
    data = data_section(params)
    name = choice(data, "data", "source", SOURCES)
    check_unused(name, data)
    max_bad = number(data, "data", "max_bad_fraction", minimum=0.0, maximum=1.0)
    return SourceParams(name, SOURCES[name], SOURCES[name].validate(data), max_bad)
