"""The `background:` section of params.yaml: the salient-object model, its options, the fill
that replaces the background and how the controlled variants remove the person."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fashionbg.core.errors import ParamError
from fashionbg.core.params import DEVICES, boolean, choice, optional_integer, section

SOD_MODELS = ("u2netp", "u2net")
NAMED_FILLS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
# How only_bg removes the person (fashionbg/background/variants.py, PERSON_REMOVERS): tiles of
# the image's own background over the person's box (the Backgrounds Challenge's only_bg_t), the
# box black (its only_bg_b), or Telea inpainting, which leaves a smear in the person's shape.
PERSON_FILLS = ("tile", "telea", "black")

# Photos rembg decodes and runs at once: 256 full-size photos are a few GB.
MAX_BATCH = 256


@dataclass(frozen=True)
class BackgroundConfig:
    model: str
    alpha_matting: bool
    post_process_mask: bool
    fill: tuple[int, int, int]
    person_fill: str             # how only_bg and the mixed backgrounds remove the person
    device: str                  # where rembg runs: auto, cpu or cuda
    batch_size: int | None       # photos per ONNX call; None = auto (1 on the CPU, 8 on CUDA)


KEYS = tuple(BackgroundConfig.__dataclass_fields__)


def read_background(params: dict[str, Any]) -> BackgroundConfig:
    cfg = section(params, "background", KEYS)
    return BackgroundConfig(
        model=choice(cfg, "background", "model", SOD_MODELS),
        alpha_matting=boolean(cfg, "background", "alpha_matting"),
        post_process_mask=boolean(cfg, "background", "post_process_mask"),
        fill=parse_fill(cfg["fill"]),
        person_fill=choice(cfg, "background", "person_fill", PERSON_FILLS),
        device=choice(cfg, "background", "device", DEVICES),
        batch_size=batch_size(cfg),
    )


def batch_size(cfg: dict[str, Any]) -> int | None:
    """`background.batch_size`; batches skip rembg's remove(), so alpha matting (which it
    applies) runs one photo at a time."""
    value = optional_integer(cfg, "background", "batch_size", 1, "auto", MAX_BATCH,
                             " (photos per rembg call, decoded in memory at once)")
    if cfg["alpha_matting"] is True and value not in (None, 1):
        raise ParamError("background.batch_size", value, "auto or 1 with alpha_matting: true")
    return value


def parse_fill(value: Any, key: str = "background.fill") -> tuple[int, int, int]:
    """A colour name or an [r, g, b] triple of integers 0..255."""
    if isinstance(value, str) and value in NAMED_FILLS:
        return NAMED_FILLS[value]
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                    for v in value)):
        return int(value[0]), int(value[1]), int(value[2])
    raise ParamError(key, value, "one of " + ", ".join(NAMED_FILLS)
                     + " or an [r, g, b] list of integers 0..255")
