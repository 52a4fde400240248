"""The registry of data sources the `download` stage can build `data/raw/` from.

A source is two functions: `validate(data_params) -> config` checks every key it reads and
raises ParamError before anything is written; `build(config, writer) -> SourceResult` fills a
RawWriter (images, masks, index rows, refusals).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fashionbg.contracts.raw import RawWriter, SourceResult
from fashionbg.sources import coco, fashionpedia, fashionstyle14, folder
from fashionbg.sources.demo import source as demo


@dataclass(frozen=True)
class Source:
    validate: Callable[[dict[str, Any]], Any]
    build: Callable[[Any, RawWriter], SourceResult]


SOURCES: dict[str, Source] = {
    "demo": Source(demo.validate, demo.build),
    "fashionstyle14": Source(fashionstyle14.validate, fashionstyle14.build),
    "fashionpedia": Source(fashionpedia.validate, fashionpedia.build),
    "folder": Source(folder.validate, folder.build),
    "coco": Source(coco.validate, coco.build),
}
