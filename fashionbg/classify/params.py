"""The `classify:` section of params.yaml, validated before any output is touched."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fashionbg.core.errors import ParamError
from fashionbg.core.params import DEVICES, batch_size, boolean, choice, integer, number, section

ARCHS = ("shallow_cnn", "resnet18", "efficientnet_lite0")
AUGMENTS = ("none", "standard", "strong")
OPTIMIZERS = ("adamw", "sgd")
PRETRAINED_ARCHS = ("efficientnet_lite0",)  # the only ImageNet weights that ship offline


@dataclass(frozen=True)
class ClassifyConfig:
    arch: str
    batchnorm: bool
    pretrained: bool
    augment: str
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    seed: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassifyConfig:
        return cls(**values)


KEYS = tuple(ClassifyConfig.__dataclass_fields__)


def read_classify(params: dict[str, Any]) -> ClassifyConfig:
    cfg = section(params, "classify", KEYS)
    p = "classify"
    config = ClassifyConfig(
        arch=choice(cfg, p, "arch", ARCHS),
        batchnorm=boolean(cfg, p, "batchnorm"),
        pretrained=boolean(cfg, p, "pretrained"),
        augment=choice(cfg, p, "augment", AUGMENTS),
        optimizer=choice(cfg, p, "optimizer", OPTIMIZERS),
        lr=number(cfg, p, "lr", minimum=0.0, exclusive_min=True),
        weight_decay=number(cfg, p, "weight_decay", minimum=0.0),
        epochs=integer(cfg, p, "epochs", minimum=1),
        batch_size=batch_size(cfg, p, "batch_size"),
        seed=integer(cfg, p, "seed", minimum=0),
        device=choice(cfg, p, "device", DEVICES),
    )
    if config.pretrained and config.arch not in PRETRAINED_ARCHS:
        raise ParamError("classify.pretrained", True,
                         f"false for {config.arch}: offline ImageNet weights exist only for "
                         + ", ".join(PRETRAINED_ARCHS))
    return config
