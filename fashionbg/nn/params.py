"""The `evaluate:` section of params.yaml: how evaluation runs and what it draws, for every
task. Evaluation rebuilds each model from its checkpoint, so it reads no training keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fashionbg.core.params import choice, integer, section
from fashionbg.nn.device import DEVICES


@dataclass(frozen=True)
class EvaluateConfig:
    device: str
    batch_size: int
    overlays: int       # segmentation test images drawn per variant


KEYS = tuple(EvaluateConfig.__dataclass_fields__)


def read_evaluate(params: dict[str, Any]) -> EvaluateConfig:
    cfg = section(params, "evaluate", KEYS)
    return EvaluateConfig(
        device=choice(cfg, "evaluate", "device", DEVICES),
        batch_size=integer(cfg, "evaluate", "batch_size", minimum=1),
        overlays=integer(cfg, "evaluate", "overlays", minimum=0, maximum=32),
    )
