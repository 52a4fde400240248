"""The `segment:` section of params.yaml, validated before a stage touches any output."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fashionbg.core.errors import ParamError
from fashionbg.core.params import DEVICES, batch_size, boolean, choice, integer, number, section

TASKS = ("semantic", "instance")
ARCHS = ("unet", "fpn", "deeplabv3plus")
ENCODERS = ("resnet18", "resnet34", "mobilenet_v2", "efficientnet_lite0")
INSTANCE_BACKBONES = ("mobilenet_v3", "resnet18", "resnet50", "efficientnet_lite0")
AUGMENTS = ("none", "standard")
ALL_CLASSES = "all"


@dataclass(frozen=True)
class SegmentConfig:
    task: str
    arch: str
    encoder: str
    decoder_width: int
    pretrained: bool
    instance_backbone: str
    instance_classes: tuple[str, ...] | None     # None: every non-background class
    min_instance_area: int
    augment: str
    epochs: int
    batch_size: int
    lr: float
    instance_lr: float
    weight_decay: float
    seed: int
    device: str

    @property
    def task_lr(self) -> float:
        """The learning rate of the chosen task's model."""
        return self.instance_lr if self.task == "instance" else self.lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmentConfig:
        classes = values["instance_classes"]
        return cls(**{**values, "instance_classes": None if classes is None else tuple(classes)})


KEYS = tuple(SegmentConfig.__dataclass_fields__)


def read_segment(params: dict[str, Any]) -> SegmentConfig:
    cfg = section(params, "segment", KEYS)
    p = "segment"
    return SegmentConfig(
        task=choice(cfg, p, "task", TASKS),
        arch=choice(cfg, p, "arch", ARCHS),
        encoder=choice(cfg, p, "encoder", ENCODERS),
        decoder_width=integer(cfg, p, "decoder_width", minimum=4, maximum=256),
        pretrained=boolean(cfg, p, "pretrained"),
        instance_backbone=choice(cfg, p, "instance_backbone", INSTANCE_BACKBONES),
        instance_classes=_instance_classes(cfg.get("instance_classes")),
        min_instance_area=integer(cfg, p, "min_instance_area", minimum=1),
        augment=choice(cfg, p, "augment", AUGMENTS),
        epochs=integer(cfg, p, "epochs", minimum=1),
        batch_size=batch_size(cfg, p, "batch_size", minimum=2),   # batch norm needs two samples
        lr=number(cfg, p, "lr", minimum=0.0, exclusive_min=True),
        instance_lr=number(cfg, p, "instance_lr", minimum=0.0, exclusive_min=True),
        weight_decay=number(cfg, p, "weight_decay", minimum=0.0),
        seed=integer(cfg, p, "seed", minimum=0),
        device=choice(cfg, p, "device", DEVICES),
    )


def _instance_classes(value: Any) -> tuple[str, ...] | None:
    if value == ALL_CLASSES:
        return None
    if (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
            and len(set(value)) == len(value)):
        return tuple(value)
    raise ParamError("segment.instance_classes", value,
                     f"{ALL_CLASSES!r} or a list of distinct class names")


def select_instance_classes(wanted: tuple[str, ...] | None, available: list[str]) -> list[str]:
    """The class names Mask R-CNN learns, in the data's order; `available` excludes background."""
    if wanted is None:
        return list(available)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ParamError("segment.instance_classes", list(wanted),
                         f"{ALL_CLASSES!r} or names from the data's classes "
                         f"({', '.join(available)}); unknown: {', '.join(missing)}")
    return [name for name in available if name in wanted]
